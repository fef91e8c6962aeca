package console

// The API's cache endpoints: browse, look at one entry, delete it, flush.

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/callout-mail/callout/shared/kvkey"
	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/wire"
)

func parseTime(q map[string][]string, field string) (time.Time, error) {
	v := first(q, field)
	if v == "" {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339, v)
	if err != nil {
		return time.Time{}, badRequest(field, "want an RFC 3339 time such as 2026-12-01T10:00:00Z")
	}
	return t, nil
}

func first(q map[string][]string, k string) string {
	if v := q[k]; len(v) > 0 {
		return strings.TrimSpace(v[0])
	}
	return ""
}

// cacheQuery reads a CacheQuery from URL parameters.
func cacheQuery(q map[string][]string) (CacheQuery, error) {
	cq := CacheQuery{Domain: first(q, "domain"), Status: verdict.Status(first(q, "status")), Q: first(q, "q"), Sort: first(q, "sort")}
	var err error
	if cq.CheckedAfter, err = parseTime(q, "checked_after"); err != nil {
		return cq, err
	}
	if cq.CheckedBefore, err = parseTime(q, "checked_before"); err != nil {
		return cq, err
	}
	if cq.ExpiresBefore, err = parseTime(q, "expires_before"); err != nil {
		return cq, err
	}
	switch first(q, "order") {
	case "", "asc":
	case "desc":
		cq.Desc = true
	default:
		return cq, badRequest("order", "asc or desc")
	}
	if v := first(q, "limit"); v != "" {
		if cq.Limit, err = strconv.Atoi(v); err != nil || cq.Limit < 1 {
			return cq, badRequest("limit", "a whole number from 1 to %d", maxPage)
		}
	}
	if v := first(q, "cursor"); v != "" {
		if cq.Cursor, err = strconv.ParseUint(v, 10, 64); err != nil {
			return cq, badRequest("cursor", "the next value of the previous page")
		}
	}
	return cq, nil
}

func (s *Server) apiCache(w http.ResponseWriter, r *http.Request, id *identity) error {
	cq, err := cacheQuery(r.URL.Query())
	if err != nil {
		return err
	}
	page, err := s.cachePage(r, id, &cq)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, page)
	return nil
}

// cachePage is a page of the cache in the identity's scope: a tenant
// browses one of its domains at a time (the one it has, when it has one).
func (s *Server) cachePage(r *http.Request, id *identity, cq *CacheQuery) (CachePage, error) {
	if !id.scope.all() {
		if cq.Domain == "" && len(id.scope.domains) == 1 {
			cq.Domain = id.scope.domains[0]
		}
		if cq.Domain == "" {
			return CachePage{}, badRequest("domain", "choose one of your domains")
		}
		if err := id.scope.inDomain(cq.Domain); err != nil {
			return CachePage{}, err
		}
	}
	return s.browse[id.scope.readOnly].Page(r.Context(), *cq, time.Now())
}

func (s *Server) apiCacheEntry(w http.ResponseWriter, r *http.Request, id *identity) error {
	key := r.URL.Query().Get("key")
	if err := id.scope.inKey(key); err != nil {
		return err
	}
	e, err := s.browse[id.scope.readOnly].Entry(r.Context(), key)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, e)
	return nil
}

// deleteEntry removes one address's entries by flushing the address, so
// that a verdict already on its way cannot bring it back.
func (s *Server) deleteEntry(r *http.Request, id *identity, key string) (wire.FlushReply, error) {
	k, err := kvkey.Parse(key)
	if err != nil {
		return wire.FlushReply{}, badRequest("key", "%v", err)
	}
	if err := id.scope.inKey(key); err != nil {
		return wire.FlushReply{}, err
	}
	if k.Kind != "addr" {
		return wire.FlushReply{}, badRequest("key", "a domain fact goes with its domain: flush the domain")
	}
	return s.flush(r, id, wire.FlushCommand{Scope: wire.ScopeAddress, Address: k.Local + "@" + k.Domain})
}

func (s *Server) apiCacheDelete(w http.ResponseWriter, r *http.Request, id *identity) error {
	rep, err := s.deleteEntry(r, id, r.URL.Query().Get("key"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, removed(rep))
	return nil
}

// removed is a flush's answer: the entries removed, and the ingests that
// did not confirm it in time (fenced until they apply it).
func removed(rep wire.FlushReply) any {
	return struct {
		Removed     uint64   `json:"removed"`
		Unconfirmed []string `json:"unconfirmed,omitempty"`
	}{rep.Removed, rep.Unconfirmed}
}

// flush runs a flush for a user, at most FLUSH_RATE a minute each: a flood
// is refused (429) rather than recorded as thousands of audit events that
// push older ones out.
func (s *Server) flush(r *http.Request, id *identity, cmd wire.FlushCommand) (wire.FlushReply, error) {
	if err := id.scope.inFlush(cmd); err != nil {
		return wire.FlushReply{}, err
	}
	if !s.flushes.take(id.user.Name, time.Now()) {
		return wire.FlushReply{}, &httpError{http.StatusTooManyRequests, "", fmt.Sprintf("more than %d flushes a minute by %s; try again in a minute", s.cfg.FlushRate, id.user.Name)}
	}
	return s.admin.Flush(r.Context(), id.who(), cmd)
}

func (s *Server) apiFlush(w http.ResponseWriter, r *http.Request, id *identity) error {
	var cmd wire.FlushCommand
	if err := decodeJSON(r, &cmd); err != nil {
		return err
	}
	rep, err := s.flush(r, id, cmd)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, removed(rep))
	return nil
}
