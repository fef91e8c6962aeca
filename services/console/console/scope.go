package console

// Who may do what, in one place: every API operation and page is wrapped
// with its access (the least role, and whether it changes anything), and
// the domain in its path is checked against the identity's scope before
// the handler runs; handlers whose domains come in a body or a query ask
// the same scope (inDomain, inAddress, inKey). Outside the scope is 404,
// as for what does not exist: a tenant learns nothing of another's domains.

import (
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/callout-mail/callout/shared/accounts"
	"github.com/callout-mail/callout/shared/address"
	"github.com/callout-mail/callout/shared/audit"
	"github.com/callout-mail/callout/shared/domains"
	"github.com/callout-mail/callout/shared/kvkey"
	"github.com/callout-mail/callout/shared/wire"
)

// access is what an operation needs.
type access struct {
	min   accounts.Role // the least role
	write bool          // a change: refused to read-only users and tokens
}

var (
	anyRead       = access{min: accounts.Domain}
	anyWrite      = access{min: accounts.Domain, write: true}
	resellerWrite = access{min: accounts.Reseller, write: true}
	adminRead     = access{min: accounts.Admin}
	adminWrite    = access{min: accounts.Admin, write: true}
)

// scope is what an identity may see and change.
type scope struct {
	role     accounts.Role
	readOnly bool
	domains  []string // sorted; nil for an admin (every domain)
}

// scopeOf is a user's scope, narrowed by its token when it came with one.
func scopeOf(u accounts.User, tok *accounts.Token) scope {
	sc := scope{role: u.Role, readOnly: u.ReadOnly}
	if u.Role != accounts.Admin {
		sc.domains = u.Domains
		if sc.domains == nil {
			sc.domains = []string{}
		}
	}
	if tok == nil {
		return sc
	}
	if tok.Role.Rank() < sc.role.Rank() {
		sc.role = tok.Role
	}
	sc.readOnly = sc.readOnly || tok.ReadOnly
	if len(tok.Domains) > 0 {
		if sc.domains == nil {
			sc.domains = tok.Domains
		} else {
			var both []string
			for _, d := range tok.Domains {
				if _, ok := slices.BinarySearch(sc.domains, d); ok {
					both = append(both, d)
				}
			}
			sc.domains = append([]string{}, both...)
		}
	}
	return sc
}

// all reports whether the scope is every domain.
func (sc scope) all() bool { return sc.domains == nil }

// has reports whether domain (in any form) is in the scope.
func (sc scope) has(domain string) bool {
	if sc.all() {
		return true
	}
	d, err := address.NormalizeDomain(domain)
	if err != nil {
		return false
	}
	_, ok := slices.BinarySearch(sc.domains, d)
	return ok
}

// errOutOfScope is what a resource outside the scope answers: the same
// 404 as one that does not exist.
func errOutOfScope(what string) error {
	return &httpError{http.StatusNotFound, "", "no such " + what}
}

// allow checks an operation's access and the domain of its path.
func (sc scope) allow(a access, r *http.Request) error {
	if sc.role.Rank() < a.min.Rank() {
		return &httpError{http.StatusForbidden, "", fmt.Sprintf("this needs the %s role", a.min)}
	}
	if a.write && sc.readOnly {
		return &httpError{http.StatusForbidden, "", "this login is read-only"}
	}
	if d := r.PathValue("domain"); d != "" && !sc.has(d) {
		return errOutOfScope("domain: " + d)
	}
	return nil
}

// inDomain checks a domain named in a body or query.
func (sc scope) inDomain(domain string) error {
	if !sc.has(domain) {
		return errOutOfScope("domain: " + domain)
	}
	return nil
}

// inAddress checks an address's domain. An address that does not parse
// is left to the operation to refuse, when the scope is every domain.
func (sc scope) inAddress(addr string) error {
	if sc.all() {
		return nil
	}
	a, err := address.Parse(addr)
	if err != nil {
		return badRequest("address", "%v", err)
	}
	if !sc.has(a.Domain) {
		return errOutOfScope("address: " + addr)
	}
	return nil
}

// inKey checks a cache key's domain.
func (sc scope) inKey(key string) error {
	if sc.all() {
		return nil
	}
	k, err := kvkey.Parse(key)
	if err != nil {
		return badRequest("key", "%v", err)
	}
	if !sc.has(k.Domain) {
		return errOutOfScope("cache entry")
	}
	return nil
}

// canTrace: a traced callout shows a destination's whole dialogue; admins
// and resellers may run one.
func (sc scope) canTrace() bool { return sc.role.Rank() >= accounts.Reseller.Rank() && !sc.readOnly }

// adminFields are the policy fields only an admin sets: a route is where
// the prober connects (a customer who could set it could aim callouts,
// and traced transcripts, at any host and port), the senders are what the
// prober says, the control probe what it asks.
func adminFields(p domains.Policy) domains.Policy {
	return domains.Policy{Route: p.Route, Sender: p.Sender, FallbackSender: p.FallbackSender, ControlProbe: p.ControlProbe}
}

// checkPolicyChange refuses a non-admin's change of an admin-only field,
// naming it.
func (sc scope) checkPolicyChange(before, after domains.Policy) error {
	if sc.role == accounts.Admin {
		return nil
	}
	b, a := adminFields(before), adminFields(after)
	switch {
	case strings.Join(b.Route, ",") != strings.Join(a.Route, ","):
		return &httpError{http.StatusForbidden, "route", "only an admin sets a domain's route"}
	case b.Sender != a.Sender:
		return &httpError{http.StatusForbidden, "sender", "only an admin sets the probe sender"}
	case b.FallbackSender != a.FallbackSender:
		return &httpError{http.StatusForbidden, "fallback_sender", "only an admin sets the fallback sender"}
	case b.ControlProbe != a.ControlProbe:
		return &httpError{http.StatusForbidden, "control_probe", "only an admin sets the control probe"}
	}
	return nil
}

// keepAdminFields is p with the admin-only fields of stored: a non-admin's
// form does not carry them.
func keepAdminFields(p, stored domains.Policy) domains.Policy {
	a := adminFields(stored)
	p.Route, p.Sender, p.FallbackSender, p.ControlProbe = a.Route, a.Sender, a.FallbackSender, a.ControlProbe
	return p
}

// seesEvent: an audit event of one of the scope's domains, or of what the
// user did itself. An admin sees every event.
func (sc scope) seesEvent(ev audit.Event, user string) bool {
	switch {
	case sc.all():
		return true
	case ev.Who == "console:"+user:
		return true
	case ev.Domain != "":
		return sc.has(ev.Domain)
	case ev.Address != "":
		return sc.inAddress(ev.Address) == nil
	}
	return false
}

// inFlush: a tenant flushes its domains and their addresses; flush all is
// the admin's.
func (sc scope) inFlush(cmd wire.FlushCommand) error {
	if sc.all() {
		return nil
	}
	switch cmd.Scope {
	case wire.ScopeDomain:
		return sc.inDomain(cmd.Domain)
	case wire.ScopeAddress:
		return sc.inAddress(cmd.Address)
	case wire.ScopeAll:
		return &httpError{http.StatusForbidden, "scope", "flushing everything needs the admin role"}
	}
	return nil // refused by the flush's own checks
}
