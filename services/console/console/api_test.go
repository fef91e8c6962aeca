package console

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/callout-mail/callout/shared/accounts"
	"github.com/callout-mail/callout/shared/audit"
	"github.com/callout-mail/callout/shared/domains"
	"github.com/callout-mail/callout/shared/operate"
	"github.com/callout-mail/callout/shared/stats"
	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/waitfor"
	"github.com/callout-mail/callout/shared/wire"
)

// TestAPI drives every endpoint as operators would, each response checked
// against openapi.yaml, and then checks that every operation in the
// document was exercised.
func TestAPI(t *testing.T) {
	sys := startSystem(t, nil)
	admin := sys.login("admin", adminPassword)
	viewer := sys.login("viewer", viewerPassword)
	route := sys.dest.Addr()

	t.Run("auth", func(t *testing.T) {
		anon := sys.anonymous()
		st, b := anon.call("GET", "/api/domains", nil)
		wantStatus(t, "no login", st, http.StatusUnauthorized, b)
		st, b = anon.call("GET", "/api/openapi.yaml", nil)
		wantStatus(t, "openapi document", st, http.StatusOK, b)
		st, b = anon.call("POST", "/api/login", map[string]string{"user": "admin", "password": "wrong"})
		wantStatus(t, "wrong password", st, http.StatusUnauthorized, b)
		st, b = anon.call("POST", "/api/login", []byte(`{"user": "admin", "password": 3}`))
		wantStatus(t, "bad login body", st, http.StatusBadRequest, b)
		st, b = sys.withToken("not-a-token").call("GET", "/api/me", nil)
		wantStatus(t, "bad token", st, http.StatusUnauthorized, b)
		st, b = sys.withToken(sys.token).call("GET", "/api/me", nil)
		wantStatus(t, "token", st, http.StatusOK, b)
		if m := decode[meReply](t, b); m.User != "admin" || m.Role != accounts.Admin || m.CSRF != "" {
			t.Fatalf("token identity %+v", m)
		}
		// A write with the cookie but without the CSRF token is refused.
		noCSRF := *admin
		noCSRF.csrf = ""
		st, b = noCSRF.call("POST", "/api/flush", map[string]string{"scope": "all"})
		wantStatus(t, "write without CSRF token", st, http.StatusForbidden, b)
		wantField(t, "write without CSRF token", b, "csrf")
		wrong := *admin
		wrong.csrf = "forged"
		st, b = wrong.call("POST", "/api/flush", map[string]string{"scope": "all"})
		wantStatus(t, "forged CSRF token", st, http.StatusForbidden, b)
		// Viewers read but never change.
		st, b = viewer.call("POST", "/api/flush", map[string]string{"scope": "all"})
		wantStatus(t, "viewer flush", st, http.StatusForbidden, b)
		st, b = viewer.call("PUT", "/api/domains/viewer.test", map[string]any{"policy": map[string]any{"mode": "off"}})
		wantStatus(t, "viewer policy", st, http.StatusForbidden, b)
		st, b = viewer.call("POST", "/api/verify", map[string]any{"address": "alice@callout.test", "trace": true})
		wantStatus(t, "viewer trace", st, http.StatusForbidden, b)
		wantField(t, "viewer trace", b, "trace")
		st, b = viewer.call("GET", "/api/domains", nil)
		wantStatus(t, "viewer reads", st, http.StatusOK, b)
	})

	t.Run("login is rate-limited per client", func(t *testing.T) {
		sys.console.limit.reset() // forget the failures above
		// One minute for the whole subtest: the per-minute counts must
		// not start afresh at a minute's turn halfway through.
		fixed := time.Now()
		sys.console.limit.mu.Lock()
		sys.console.limit.now = func() time.Time { return fixed }
		sys.console.limit.mu.Unlock()
		defer func() {
			sys.console.limit.mu.Lock()
			sys.console.limit.now = time.Now
			sys.console.limit.mu.Unlock()
		}()
		anon := sys.anonymous()
		for i := 0; i < 5; i++ {
			st, b := anon.call("POST", "/api/login", map[string]string{"user": "viewer", "password": "guess" + strconv.Itoa(i)})
			wantStatus(t, "failed login", st, http.StatusUnauthorized, b)
		}
		st, b := anon.call("POST", "/api/login", map[string]string{"user": "viewer", "password": viewerPassword})
		wantStatus(t, "login after too many failures", st, http.StatusTooManyRequests, b)
		// Clients are counted apart: the limit is per address.
		if done, err := sys.console.limit.attempt("192.0.2.1", "someone"); err != nil {
			t.Fatalf("another client limited: %v", err)
		} else {
			done(true)
		}
		if _, err := sys.console.limit.attempt("127.0.0.1", "someone"); err == nil {
			t.Fatal("the limited client was let through")
		}
		sys.console.limit.reset() // let the other tests log in
	})

	var static operate.Stored
	t.Run("domains", func(t *testing.T) {
		st, b := admin.call("PUT", "/api/domains/static.test", map[string]any{"policy": map[string]any{"mode": "static", "mailboxes": []string{"alice", "Bob@static.test"}}})
		wantStatus(t, "create static", st, http.StatusOK, b)
		static = decode[operate.Stored](t, b)
		if static.Revision == 0 || strings.Join(static.Policy.Mailboxes, ",") != "alice,Bob" {
			t.Fatalf("created %+v", static)
		}
		st, b = admin.call("PUT", "/api/domains/static.test", map[string]any{"policy": map[string]any{"mode": "off"}})
		wantStatus(t, "create over an existing domain", st, http.StatusConflict, b)
		wantField(t, "create over an existing domain", b, "revision")
		st, b = admin.call("PUT", "/api/domains/callout.test", map[string]any{"policy": map[string]any{"mode": "callout", "route": []string{route}}})
		wantStatus(t, "create callout", st, http.StatusOK, b)

		// Bad input names its field and is never a 500.
		for _, c := range []struct {
			body  any
			field string
		}{
			{map[string]any{"policy": map[string]any{"mode": "static"}}, "mailboxes"},
			{map[string]any{"policy": map[string]any{"mode": "Accept"}}, "mode"},
			{map[string]any{"policy": map[string]any{"route": []string{"mx.example"}}}, "route"},
			{map[string]any{"policy": map[string]any{"mode": "static", "mailboxes": []string{"x@other.test"}}}, "mailboxes"},
			{map[string]any{"policy": map[string]any{"on_tempfail": "reject"}}, "on_tempfail"},
			{map[string]any{"policy": map[string]any{"sender": "not an address"}}, "sender"},
			{map[string]any{"policy": map[string]any{"colour": "blue"}}, "colour"},
			{map[string]any{"policy": map[string]any{"mode": 7}}, "policy.mode"},
			{map[string]any{}, "policy"},
		} {
			st, b := admin.call("PUT", "/api/domains/bad.test", c.body)
			wantStatus(t, "bad policy", st, http.StatusBadRequest, b)
			wantField(t, "bad policy", b, c.field)
		}
		st, b = admin.call("PUT", "/api/domains/bad..test", map[string]any{"policy": map[string]any{"mode": "off"}})
		wantStatus(t, "bad domain", st, http.StatusBadRequest, b)
		wantField(t, "bad domain", b, "domain")
		st, b = admin.call("PUT", "/api/domains/bad.test", []byte(`{"policy": `))
		wantStatus(t, "truncated JSON", st, http.StatusBadRequest, b)
		st, b = admin.call("GET", "/api/domains/nothing.test", nil)
		wantStatus(t, "unknown domain", st, http.StatusNotFound, b)

		// Concurrent edits: the second writer's revision is stale.
		upd := map[string]any{"policy": map[string]any{"mode": "static", "mailboxes": []string{"alice", "bob", "carol"}}, "revision": static.Revision}
		st, b = admin.call("PUT", "/api/domains/static.test", upd)
		wantStatus(t, "update", st, http.StatusOK, b)
		newer := decode[operate.Stored](t, b)
		st, b = viewer.call("GET", "/api/domains/static.test", nil)
		wantStatus(t, "get", st, http.StatusOK, b)
		if got := decode[operate.Stored](t, b); got.Revision != newer.Revision || len(got.Policy.Mailboxes) != 3 {
			t.Fatalf("get %+v, want revision %d with 3 mailboxes", got, newer.Revision)
		}
		st, b = admin.call("PUT", "/api/domains/static.test", upd)
		wantStatus(t, "stale update", st, http.StatusConflict, b)

		// Bulk replace from a pasted list and from CSV.
		st, b = admin.call("PUT", "/api/domains/static.test/mailboxes?revision="+strconv.FormatUint(newer.Revision, 10), "alice\n# a comment\n\nbob@static.test\n")
		wantStatus(t, "mailboxes from lines", st, http.StatusOK, b)
		lines := decode[operate.Stored](t, b)
		if strings.Join(lines.Policy.Mailboxes, ",") != "alice,bob" {
			t.Fatalf("mailboxes %v", lines.Policy.Mailboxes)
		}
		st, b = admin.call("PUT", "/api/domains/static.test/mailboxes?revision="+strconv.FormatUint(newer.Revision, 10), "carol\n")
		wantStatus(t, "mailboxes with a stale revision", st, http.StatusConflict, b)
		st, b = admin.call("PUT", "/api/domains/static.test/mailboxes?revision="+strconv.FormatUint(lines.Revision, 10), "address,name\nalice@static.test,Alice\n\"bob\",Bob\n")
		wantStatus(t, "mailboxes from CSV", st, http.StatusOK, b)
		static = decode[operate.Stored](t, b)
		if strings.Join(static.Policy.Mailboxes, ",") != "alice,bob" {
			t.Fatalf("mailboxes from CSV %v", static.Policy.Mailboxes)
		}
		st, b = admin.call("PUT", "/api/domains/static.test/mailboxes?revision="+strconv.FormatUint(static.Revision, 10), "x@elsewhere.test\n")
		wantStatus(t, "mailbox of another domain", st, http.StatusBadRequest, b)
		wantField(t, "mailbox of another domain", b, "mailboxes")
		st, b = admin.call("PUT", "/api/domains/static.test/mailboxes", "alice\n")
		wantStatus(t, "mailboxes without revision", st, http.StatusBadRequest, b)
		wantField(t, "mailboxes without revision", b, "revision")

		cur := decode[operate.Stored](t, must(admin.call("GET", "/api/domains/callout.test", nil)))
		st, b = admin.call("PUT", "/api/domains/callout.test/bypass?revision="+strconv.FormatUint(cur.Revision, 10), "postmaster-alias\nabuse\n")
		wantStatus(t, "bypass", st, http.StatusOK, b)
		cur = decode[operate.Stored](t, b)
		if len(cur.Policy.Bypass) != 2 {
			t.Fatalf("bypass %v", cur.Policy.Bypass)
		}

		// Monitor mode on and off; not for a static domain.
		st, b = admin.call("POST", "/api/domains/callout.test/monitor", map[string]any{"on": true, "revision": cur.Revision})
		wantStatus(t, "monitor on", st, http.StatusOK, b)
		cur = decode[operate.Stored](t, b)
		if cur.Policy.EffectiveMode() != domains.ModeMonitor {
			t.Fatalf("mode %s", cur.Policy.Mode)
		}
		st, b = admin.call("POST", "/api/domains/callout.test/monitor", map[string]any{"on": false, "revision": cur.Revision})
		wantStatus(t, "monitor off", st, http.StatusOK, b)
		cur = decode[operate.Stored](t, b)
		if cur.Policy.EffectiveMode() != domains.ModeCallout {
			t.Fatalf("mode %s", cur.Policy.Mode)
		}
		st, b = admin.call("POST", "/api/domains/static.test/monitor", map[string]any{"on": true, "revision": static.Revision})
		wantStatus(t, "monitor on a static domain", st, http.StatusBadRequest, b)
		wantField(t, "monitor on a static domain", b, "mode")
		st, b = admin.call("POST", "/api/domains/callout.test/monitor", map[string]any{"revision": cur.Revision})
		wantStatus(t, "monitor without on", st, http.StatusBadRequest, b)
		wantField(t, "monitor without on", b, "on")

		// Delete needs the current revision.
		gone := decode[operate.Stored](t, must(admin.call("PUT", "/api/domains/gone.test", map[string]any{"policy": map[string]any{"mode": "off"}})))
		st, b = admin.call("DELETE", "/api/domains/gone.test?revision="+strconv.FormatUint(gone.Revision+100, 10), nil)
		wantStatus(t, "delete with a stale revision", st, http.StatusConflict, b)
		st, b = admin.call("DELETE", "/api/domains/gone.test?revision="+strconv.FormatUint(gone.Revision, 10), nil)
		wantStatus(t, "delete", st, http.StatusNoContent, b)
		st, b = admin.call("DELETE", "/api/domains/gone.test?revision=1", nil)
		wantStatus(t, "delete again", st, http.StatusNotFound, b)

		rows := decode[[]domainRow](t, must(viewer.call("GET", "/api/domains", nil)))
		var names []string
		for _, r := range rows {
			names = append(names, r.Domain+":"+string(r.Mode)+":"+strconv.Itoa(r.Mailboxes))
		}
		if strings.Join(names, " ") != "callout.test:callout:0 static.test:static:2" {
			t.Fatalf("domains %v", names)
		}
	})

	t.Run("verify", func(t *testing.T) {
		waitPolicy(t, sys, admin, "static.test", "alice", verdict.Accept)
		for _, c := range []struct {
			addr   string
			action verdict.Action
		}{
			{"alice@static.test", verdict.Accept},
			{"BOB+tag@static.test", verdict.Accept},
			{"mallory@static.test", verdict.Reject},
			{"alice@callout.test", verdict.Accept},
			{"nobody@callout.test", verdict.Reject},
			{"abuse@callout.test", verdict.Accept}, // bypass
		} {
			st, b := viewer.call("POST", "/api/verify", map[string]any{"address": c.addr})
			wantStatus(t, "verify "+c.addr, st, http.StatusOK, b)
			if rep := decode[wire.VerifyReply](t, b); rep.Decision.Action != c.action {
				t.Errorf("verify %s: %s %s, want %s", c.addr, rep.Decision.Action, rep.Decision, c.action)
			}
		}
		st, b := viewer.call("POST", "/api/verify", map[string]any{"address": ""})
		wantStatus(t, "empty address", st, http.StatusBadRequest, b)
		wantField(t, "empty address", b, "address")
		st, b = viewer.call("POST", "/api/verify", map[string]any{"address": "a@b.test", "timeout_ms": -1})
		wantStatus(t, "negative timeout", st, http.StatusBadRequest, b)
		wantField(t, "negative timeout", b, "timeout_ms")
		st, b = viewer.call("POST", "/api/verify", map[string]any{"address": "a\r\nRSET@b.test"})
		wantStatus(t, "CR LF in an address", st, http.StatusOK, b)
		if rep := decode[wire.VerifyReply](t, b); rep.Decision.Action == verdict.Accept && rep.Verdict != nil && rep.Verdict.Source == verdict.SourceProbe {
			t.Fatalf("an injected address was called out: %s", b)
		}
		before := sys.dest.RcptsFor("bob@callout.test")
		st, b = admin.call("POST", "/api/verify", map[string]any{"address": "bob@callout.test", "trace": true})
		wantStatus(t, "trace", st, http.StatusOK, b)
		rep := decode[wire.VerifyReply](t, b)
		var sawRcpt bool
		for _, l := range rep.Transcript {
			if strings.Contains(l.Text, "RCPT TO:<bob@callout.test>") {
				sawRcpt = true
			}
		}
		if !sawRcpt || sys.dest.RcptsFor("bob@callout.test") <= before || rep.Decision.Action != verdict.Accept {
			t.Fatalf("trace did not call out: %s", b)
		}
	})

	t.Run("cache", func(t *testing.T) {
		var page CachePage
		waitfor.Cond(t, 10*time.Second, func() bool {
			page = decode[CachePage](t, must(viewer.call("GET", "/api/cache?"+q(url.Values{"domain": {"callout.test"}}), nil)))
			return len(page.Entries) >= 3 // alice, nobody, bob and the catch-all fact
		})
		st, b := viewer.call("GET", "/api/cache?"+q(url.Values{"domain": {"callout.test"}, "status": {"invalid"}}), nil)
		wantStatus(t, "filter by status", st, http.StatusOK, b)
		inv := decode[CachePage](t, b)
		if len(inv.Entries) != 1 || inv.Entries[0].Verdict.Address != "nobody@callout.test" {
			t.Fatalf("invalid entries %+v", inv.Entries)
		}
		// Pages of one hold, in order, every entry once.
		var all []string
		cursor := ""
		for i := 0; i < 20; i++ {
			v := url.Values{"limit": {"1"}, "domain": {"callout.test"}}
			if cursor != "" {
				v.Set("cursor", cursor)
			}
			p := decode[CachePage](t, must(viewer.call("GET", "/api/cache?"+q(v), nil)))
			for _, e := range p.Entries {
				all = append(all, e.Key)
			}
			if cursor = p.Next; cursor == "" {
				break
			}
		}
		if len(all) != len(page.Entries) {
			t.Fatalf("paged %v, listed %d", all, len(page.Entries))
		}
		sorted := decode[CachePage](t, must(viewer.call("GET", "/api/cache?"+q(url.Values{"domain": {"callout.test"}, "sort": {"address"}, "order": {"desc"}}), nil)))
		keys := make([]string, len(sorted.Entries))
		for i, e := range sorted.Entries {
			keys[i] = e.Key
		}
		if !sort.SliceIsSorted(keys, func(i, j int) bool { return keys[i] > keys[j] }) || len(keys) != len(page.Entries) {
			t.Fatalf("sorted by address, descending: %v", keys)
		}
		wild := decode[CachePage](t, must(viewer.call("GET", "/api/cache?"+q(url.Values{"q": {"ali*@callout.test"}}), nil)))
		if len(wild.Entries) != 1 || wild.Entries[0].Verdict.Address != "alice@callout.test" {
			t.Fatalf("wildcard %+v", wild.Entries)
		}
		for _, c := range []struct{ query, field string }{
			{"sort=address", "sort"}, {"sort=colour&domain=callout.test", "sort"}, {"status=maybe", "status"}, {"limit=0", "limit"},
			{"limit=100000", "limit"}, {"cursor=x", "cursor"}, {"checked_after=yesterday", "checked_after"}, {"domain=a..b", "domain"},
			{"q=%5B", "q"}, {"order=up", "order"},
		} {
			st, b := viewer.call("GET", "/api/cache?"+c.query, nil)
			wantStatus(t, "bad query "+c.query, st, http.StatusBadRequest, b)
			wantField(t, "bad query "+c.query, b, c.field)
		}
		key := inv.Entries[0].Key
		st, b = viewer.call("GET", "/api/cache/entry?key="+url.QueryEscape(key), nil)
		wantStatus(t, "entry", st, http.StatusOK, b)
		if e := decode[CacheEntry](t, b); e.Verdict.Status != verdict.Invalid || e.Verdict.Code != 550 || e.Verdict.ExpiresAt.IsZero() {
			t.Fatalf("entry %+v", e)
		}
		st, b = viewer.call("GET", "/api/cache/entry?key=nonsense", nil)
		wantStatus(t, "bad key", st, http.StatusBadRequest, b)
		st, b = viewer.call("DELETE", "/api/cache/entry?key="+url.QueryEscape(key), nil)
		wantStatus(t, "viewer delete", st, http.StatusForbidden, b)
		st, b = admin.call("DELETE", "/api/cache/entry?key="+url.QueryEscape(key), nil)
		wantStatus(t, "delete entry", st, http.StatusOK, b)
		st, b = viewer.call("GET", "/api/cache/entry?key="+url.QueryEscape(key), nil)
		wantStatus(t, "deleted entry", st, http.StatusNotFound, b)
		// The next verify asks the destination again.
		before := sys.dest.RcptsFor("nobody@callout.test")
		must(viewer.call("POST", "/api/verify", map[string]any{"address": "nobody@callout.test"}))
		if sys.dest.RcptsFor("nobody@callout.test") != before+1 {
			t.Fatal("a deleted entry was still answered from a cache")
		}

		st, b = admin.call("POST", "/api/flush", map[string]any{"scope": "domain", "domain": "callout.test", "only": "valid"})
		wantStatus(t, "flush valid", st, http.StatusOK, b)
		for _, c := range []struct {
			body  any
			field string
		}{
			{map[string]any{"scope": "galaxy"}, "scope"},
			{map[string]any{"scope": "domain"}, "domain"},
			{map[string]any{"scope": "address", "address": "no at sign"}, "address"},
			{map[string]any{"scope": "all", "only": "catch_all"}, "only"},
			{map[string]any{"scope": "all", "extra": 1}, "extra"},
		} {
			st, b := admin.call("POST", "/api/flush", c.body)
			wantStatus(t, "bad flush", st, http.StatusBadRequest, b)
			wantField(t, "bad flush", b, c.field)
		}
		st, b = sys.withToken(sys.token).call("POST", "/api/flush", map[string]any{"scope": "all"})
		wantStatus(t, "flush all with a token", st, http.StatusOK, b)
		if p := decode[CachePage](t, must(viewer.call("GET", "/api/cache", nil))); len(p.Entries) != 0 {
			t.Fatalf("entries after a full flush: %+v", p.Entries)
		}
	})

	t.Run("stats, hosts and history", func(t *testing.T) {
		var f stats.Fleet
		waitfor.Cond(t, 10*time.Second, func() bool {
			f = decode[stats.Fleet](t, must(viewer.call("GET", "/api/stats", nil)))
			return f.Instances["ingest"] == 1 && f.Instances["prober"] == 1 && f.Instances["cachekeeper"] == 1 && f.Totals["verifies"] >= 10
		})
		var h struct {
			Samples []Sample `json:"samples"`
		}
		waitfor.Cond(t, 10*time.Second, func() bool {
			h = decode[struct {
				Samples []Sample `json:"samples"`
			}](t, must(viewer.call("GET", "/api/stats/history", nil)))
			return len(h.Samples) >= 2
		})
		hosts := decode[[]wire.HostsReply](t, must(viewer.call("GET", "/api/hosts", nil)))
		if len(hosts) != 1 || len(hosts[0].Hosts) == 0 || hosts[0].Hosts[0].Host != route {
			t.Fatalf("hosts %+v, want %s", hosts, route)
		}
	})

	t.Run("audit", func(t *testing.T) {
		evs := decode[[]audit.Event](t, must(viewer.call("GET", "/api/audit?n=1000", nil)))
		count := map[string]int{}
		var changes []audit.Event
		for _, ev := range evs {
			count[ev.What]++
			if ev.What == audit.Login || ev.What == audit.LoginFailed {
				// Logins: who, from where, when, and why one failed.
				if ev.Client != "127.0.0.1" || ev.At.IsZero() || !strings.HasPrefix(ev.Who, "console:") || (ev.What == audit.LoginFailed) == (ev.Result == "") {
					t.Errorf("login event %+v", ev)
				}
				continue
			}
			changes = append(changes, ev)
			if ev.Who != "console:admin" || ev.At.IsZero() {
				t.Errorf("event %+v: want who console:admin and a time", ev)
			}
		}
		// Logins above: the admin's and the viewer's, the wrong password
		// at "auth" and the five guesses (the one the limit refused is
		// not recorded).
		if count[audit.Login] < 2 || count[audit.LoginFailed] < 6 {
			t.Fatalf("login events %v", count)
		}
		evs = changes
		// Writes above: 2 creates, 1 update, 2 list replaces, 1 bypass, 2
		// monitor switches, 1 create and 1 removal of gone.test; flushes: one
		// entry delete, valid of a domain, all.
		if count[audit.PolicySet] != 9 || count[audit.PolicyRemove] != 1 || count[audit.Flush] != 3 {
			t.Fatalf("audit counts %v", count)
		}
		if evs[0].What != audit.Flush || evs[0].Scope != wire.ScopeAll {
			t.Fatalf("newest first: %+v", evs[0])
		}
		f := decode[[]audit.Event](t, must(viewer.call("GET", "/api/audit?what=policy.rm", nil)))
		if len(f) != 1 || f[0].Domain != "gone.test" || f[0].Before == nil {
			t.Fatalf("policy.rm events %+v", f)
		}
		st, b := viewer.call("GET", "/api/audit?what=everything", nil)
		wantStatus(t, "bad filter", st, http.StatusBadRequest, b)
		wantField(t, "bad filter", b, "what")
	})

	t.Run("logout", func(t *testing.T) {
		c := sys.login("viewer", viewerPassword)
		st, b := c.call("POST", "/api/logout", nil)
		wantStatus(t, "logout", st, http.StatusNoContent, b)
		st, b = c.call("GET", "/api/me", nil)
		wantStatus(t, "after logout", st, http.StatusUnauthorized, b)
		st, b = c.call("GET", "/api/nothing-here", nil)
		wantStatus(t, "unknown endpoint", st, http.StatusNotFound, b)
	})

	// After the audit counts above: these writes are audited too.
	t.Run("lists: export, import with a dry run, one entry", func(t *testing.T) { listEdits(t, admin, viewer) })
	t.Run("a list of 100,000: imported, audited, edited, served, exported", func(t *testing.T) { longList(t, sys, admin, viewer) })

	t.Run("decision log: search, CSV, history, erase", func(t *testing.T) { decisionLog(t, sys, admin, viewer) })
	t.Run("every role, every operation: no leak", func(t *testing.T) { roleWalk(t, sys, admin) })

	t.Run("every operation of openapi.yaml is exercised", func(t *testing.T) {
		var missing []string
		ops := specOperations(t)
		for _, op := range ops {
			if !sys.covered[op] {
				missing = append(missing, op)
			}
		}
		if len(missing) > 0 || len(ops) < 30 {
			t.Fatalf("%d operations; not exercised: %v", len(ops), missing)
		}
	})
}

// must returns the body of a call that must succeed.
func must(st int, b []byte) []byte {
	if st >= 300 {
		panic("call failed: " + strconv.Itoa(st) + " " + string(b))
	}
	return b
}

// waitPolicy waits until the ingests serve a domain's new policy.
func waitPolicy(t *testing.T, sys *system, c *client, domain, local string, want verdict.Action) {
	t.Helper()
	waitfor.Cond(t, 10*time.Second, func() bool {
		rep := decode[wire.VerifyReply](t, must(c.call("POST", "/api/verify", map[string]any{"address": local + "@" + domain})))
		return rep.Decision.Action == want
	})
}

func TestSessionsExpire(t *testing.T) {
	s := newSessions(time.Minute)
	u := accounts.User{Name: "a", Role: accounts.Admin, ReadOnly: true}
	now := time.Now()
	id, _ := s.create(u, now)
	if s.get(id, now.Add(59*time.Second)) == nil {
		t.Fatal("a fresh session is gone")
	}
	if s.get(id, now.Add(61*time.Second)) != nil {
		t.Fatal("an expired session still works")
	}
	if s.get("forged", now) != nil {
		t.Fatal("an unknown session id works")
	}
}

func TestParseUsers(t *testing.T) {
	h := "$2a$04$0123456789012345678901uWzY3Kq8wq7JxvC8Jv0JYv4J3p1s1K2"
	for _, c := range []struct {
		text string
		ok   bool
	}{
		{"admin:admin:" + h, true},
		{"# comment\nv:viewer:" + h + " w:viewer:" + h, true},
		{"admin:root:" + h, false},
		{"admin:admin:plaintext", false},
		{"admin:admin", false},
		{"admin:admin:" + h + ":nothex", false},
		{"a:admin:" + h + "\na:viewer:" + h, false},
		{"<b>:admin:" + h, false},
	} {
		_, err := ParseUsers(c.text)
		if (err == nil) != c.ok {
			t.Errorf("ParseUsers(%q) = %v, want ok %v", c.text, err, c.ok)
		}
	}
}

// The domain list comes a page at a time, searchable, with a Link header
// to the next page.
func TestDomainListPages(t *testing.T) {
	sys := startSystem(t, nil)
	admin := sys.login("admin", adminPassword)
	for i := 0; i < 25; i++ {
		st, b := admin.call("PUT", fmt.Sprintf("/api/domains/page%02d.test", i), map[string]any{"policy": map[string]any{"mode": "off"}})
		wantStatus(t, "create", st, http.StatusOK, b)
	}
	var got []string
	path := "/api/domains?q=PAGE&limit=10"
	for pages := 0; path != ""; pages++ {
		if pages > 3 {
			t.Fatal("more pages than 25 domains need")
		}
		st, b := admin.call("GET", path, nil)
		wantStatus(t, "list", st, http.StatusOK, b)
		for _, r := range decode[[]domainRow](t, b) {
			got = append(got, r.Domain)
		}
		path = ""
		if l := admin.header.Get("Link"); l != "" {
			path = strings.TrimSuffix(strings.TrimPrefix(l, "<"), `>; rel="next"`)
		}
	}
	if len(got) != 25 || got[0] != "page00.test" || got[24] != "page24.test" || !sort.StringsAreSorted(got) {
		t.Fatalf("pages gave %v", got)
	}
	st, b := admin.call("GET", "/api/domains?q=page1", nil)
	if rows := decode[[]domainRow](t, b); st != http.StatusOK || len(rows) != 10 || admin.header.Get("Link") != "" {
		t.Fatalf("search page1: %d rows, link %q", len(rows), admin.header.Get("Link"))
	}
	st, b = admin.call("GET", "/api/domains?limit=0", nil)
	wantStatus(t, "limit 0", st, http.StatusBadRequest, b)
	wantField(t, "limit 0", b, "limit")
}

// A list is exported as CSV, imported by merge or replace with a dry run
// first, and changed one entry at a time; each write checks the revision.
func listEdits(t *testing.T, admin, viewer *client) {
	st, b := admin.call("PUT", "/api/domains/lists.test", map[string]any{"policy": map[string]any{"mode": "static", "mailboxes": []string{"alice", "bob"}}})
	wantStatus(t, "create", st, http.StatusOK, b)
	rev := decode[operate.Stored](t, b).Revision

	// What a merge would do, without doing it.
	st, b = admin.call("PUT", fmt.Sprintf("/api/domains/lists.test/mailboxes?revision=%d&mode=merge&dry_run=true", rev), "carol\nBob@lists.test\n")
	wantStatus(t, "dry run", st, http.StatusOK, b)
	var prev struct {
		DryRun    bool             `json:"dry_run"`
		Mailboxes audit.ListChange `json:"mailboxes"`
	}
	if err := json.Unmarshal(b, &prev); err != nil || !prev.DryRun || prev.Mailboxes.Count != 3 || prev.Mailboxes.AddedCount != 1 || prev.Mailboxes.Added[0] != "carol" || prev.Mailboxes.RemovedCount != 0 {
		t.Fatalf("dry run: %s %v", b, err)
	}
	if got := decode[operate.Stored](t, must(admin.call("GET", "/api/domains/lists.test", nil))); got.Revision != rev {
		t.Fatal("a dry run wrote")
	}
	// The merge itself, then a replace previewed.
	st, b = admin.call("PUT", fmt.Sprintf("/api/domains/lists.test/mailboxes?revision=%d&mode=merge", rev), "carol\n")
	wantStatus(t, "merge", st, http.StatusOK, b)
	got := decode[operate.Stored](t, b)
	if strings.Join(got.Policy.Mailboxes, ",") != "alice,bob,carol" {
		t.Fatalf("merged: %v", got.Policy.Mailboxes)
	}
	st, b = admin.call("PUT", fmt.Sprintf("/api/domains/lists.test/mailboxes?revision=%d&dry_run=true", got.Revision), "dave\n")
	if err := json.Unmarshal(b, &prev); st != http.StatusOK || err != nil || prev.Mailboxes.RemovedCount != 3 || prev.Mailboxes.AddedCount != 1 {
		t.Fatalf("replace dry run: %d %s", st, b)
	}
	st, b = admin.call("PUT", fmt.Sprintf("/api/domains/lists.test/mailboxes?revision=%d&mode=swap", got.Revision), "dave\n")
	wantStatus(t, "bad mode", st, http.StatusBadRequest, b)
	wantField(t, "bad mode", b, "mode")

	// One entry at a time, case as the ingests compare it.
	st, b = admin.call("POST", fmt.Sprintf("/api/domains/lists.test/mailboxes/erin?revision=%d", got.Revision), nil)
	wantStatus(t, "add one", st, http.StatusOK, b)
	got = decode[operate.Stored](t, b)
	st, b = admin.call("DELETE", fmt.Sprintf("/api/domains/lists.test/mailboxes/BOB@lists.test?revision=%d", got.Revision), nil)
	wantStatus(t, "remove one", st, http.StatusOK, b)
	got = decode[operate.Stored](t, b)
	if strings.Join(got.Policy.Mailboxes, ",") != "alice,carol,erin" {
		t.Fatalf("after add and remove: %v", got.Policy.Mailboxes)
	}
	st, b = admin.call("DELETE", fmt.Sprintf("/api/domains/lists.test/mailboxes/nobody?revision=%d", got.Revision), nil)
	wantStatus(t, "remove one not there", st, http.StatusNotFound, b)
	st, b = admin.call("POST", fmt.Sprintf("/api/domains/lists.test/mailboxes/frank?revision=%d", rev), nil)
	wantStatus(t, "stale revision", st, http.StatusConflict, b)
	st, b = viewer.call("POST", fmt.Sprintf("/api/domains/lists.test/mailboxes/frank?revision=%d", got.Revision), nil)
	wantStatus(t, "viewer adds", st, http.StatusForbidden, b)

	// Export, and the export imports as it is.
	st, b = viewer.call("GET", "/api/domains/lists.test/mailboxes", nil)
	if st != http.StatusOK || string(b) != "local_part\nalice\ncarol\nerin\n" {
		t.Fatalf("export: %d %q", st, b)
	}
	st, b = admin.call("PUT", fmt.Sprintf("/api/domains/lists.test/mailboxes?revision=%d&dry_run=true", got.Revision), string(b))
	if err := json.Unmarshal(b, &prev); st != http.StatusOK || err != nil || prev.Mailboxes.AddedCount != 0 || prev.Mailboxes.RemovedCount != 0 {
		t.Fatalf("re-import of the export changes: %s", b)
	}
	// Each write was audited with what it changed, never the list.
	evs := decode[[]audit.Event](t, must(admin.call("GET", "/api/audit?what=policy.set", nil)))
	if len(evs) < 4 || evs[0].Lists["mailboxes"].RemovedCount != 1 || evs[0].Lists["mailboxes"].Removed[0] != "bob" || strings.Contains(string(evs[0].After), "alice") {
		t.Fatalf("newest audit event %+v", evs[0])
	}
	// The bypass list has the same operations.
	st, b = admin.call("POST", fmt.Sprintf("/api/domains/lists.test/bypass/abuse?revision=%d", got.Revision), nil)
	wantStatus(t, "add to bypass", st, http.StatusOK, b)
	got = decode[operate.Stored](t, b)
	if st, b = viewer.call("GET", "/api/domains/lists.test/bypass", nil); st != http.StatusOK || string(b) != "local_part\nabuse\n" {
		t.Fatalf("bypass export: %d %q", st, b)
	}
	st, b = admin.call("DELETE", fmt.Sprintf("/api/domains/lists.test/bypass/abuse?revision=%d", got.Revision), nil)
	wantStatus(t, "remove from bypass", st, http.StatusOK, b)
}

// A mailbox list of 100,000 entries is imported in one upload, saved and
// audited (the event says what changed, and fits a message), changed one
// entry at a time, answered from by the ingest, and exported whole.
func longList(t *testing.T, sys *system, admin, viewer *client) {
	const n = 100_000
	st, b := admin.call("PUT", "/api/domains/big.test", map[string]any{"policy": map[string]any{"mode": "static", "mailboxes": []string{"first"}}})
	wantStatus(t, "create", st, http.StatusOK, b)
	rev := decode[operate.Stored](t, b).Revision
	var up strings.Builder
	up.WriteString("address\n")
	for i := range n {
		fmt.Fprintf(&up, "user%06d@big.test\n", i)
	}
	st, b = admin.call("PUT", fmt.Sprintf("/api/domains/big.test/mailboxes?revision=%d", rev), up.String())
	wantStatus(t, "import 100,000", st, http.StatusOK, b)
	got := decode[operate.Stored](t, b)
	if len(got.Policy.Mailboxes) != n || !slices.Contains(got.Policy.Mailboxes, "user099999") || slices.Contains(got.Policy.Mailboxes, "first") {
		t.Fatalf("imported: %d mailboxes", len(got.Policy.Mailboxes))
	}
	// The audit event: counts and samples, and small.
	st, b = admin.call("GET", "/api/audit?what=policy.set&domain=big.test", nil)
	wantStatus(t, "audit", st, http.StatusOK, b)
	evs := decode[[]audit.Event](t, b)
	if len(evs) == 0 || len(b) > 32<<10 {
		t.Fatalf("audit: %d events in %d bytes", len(evs), len(b))
	}
	if lc := evs[0].Lists["mailboxes"]; lc.AddedCount != n || lc.RemovedCount != 1 || lc.Count != n || len(lc.Added) > audit.ListSample {
		t.Fatalf("audit of the import: %+v", lc)
	}
	// One entry in, one out: the event says just that.
	st, b = admin.call("POST", fmt.Sprintf("/api/domains/big.test/mailboxes/zoe?revision=%d", got.Revision), nil)
	wantStatus(t, "add one", st, http.StatusOK, b)
	got = decode[operate.Stored](t, b)
	st, b = admin.call("DELETE", fmt.Sprintf("/api/domains/big.test/mailboxes/user000007?revision=%d", got.Revision), nil)
	wantStatus(t, "remove one", st, http.StatusOK, b)
	evs = decode[[]audit.Event](t, must(admin.call("GET", "/api/audit?what=policy.set&domain=big.test", nil)))
	if lc := evs[0].Lists["mailboxes"]; lc.RemovedCount != 1 || lc.Removed[0] != "user000007" || lc.AddedCount != 0 || lc.Count != n {
		t.Fatalf("audit of one removal: %+v", lc)
	}
	if lc := evs[1].Lists["mailboxes"]; lc.AddedCount != 1 || lc.Added[0] != "zoe" || lc.Count != n+1 {
		t.Fatalf("audit of one addition: %+v", lc)
	}
	// The ingests answer from the whole list.
	for addr, want := range map[string]string{"user099999@big.test": "accept", "zoe@big.test": "accept", "user000007@big.test": "reject", "nobody@big.test": "reject"} {
		waitfor.Cond(t, 15*time.Second, func() bool {
			st, b := admin.call("POST", "/api/verify", map[string]any{"address": addr})
			var rep struct {
				Decision struct{ Action string } `json:"decision"`
			}
			return st == http.StatusOK && json.Unmarshal(b, &rep) == nil && rep.Decision.Action == want
		})
	}
	// The domain list counts without reading the list.
	st, b = viewer.call("GET", "/api/domains?q=big.test", nil)
	if rows := decode[[]domainRow](t, b); st != http.StatusOK || len(rows) != 1 || rows[0].Mailboxes != n {
		t.Fatalf("domain list: %d %.300s", st, b)
	}
	st, b = viewer.call("GET", "/api/domains/big.test/mailboxes", nil)
	if st != http.StatusOK || bytes.Count(b, []byte("\n")) != n+1 || !bytes.Contains(b, []byte("\nzoe\n")) || bytes.Contains(b, []byte("user000007")) {
		t.Fatalf("export: %d, %d lines", st, bytes.Count(b, []byte("\n")))
	}
}
