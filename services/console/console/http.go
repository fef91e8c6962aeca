package console

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/callout-mail/callout/shared/accounts"
	"github.com/callout-mail/callout/shared/decisions"
	"github.com/callout-mail/callout/shared/domains"
	"github.com/callout-mail/callout/shared/operate"
)

type apiHandler func(w http.ResponseWriter, r *http.Request, id *identity) error

// api wraps a JSON endpoint: authentication, access and scope (see
// scope.go), CSRF, error mapping.
func (s *Server) api(a access, h apiHandler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, maxBody)
		id := s.identify(r)
		var err error
		switch {
		case id == nil:
			err = &httpError{http.StatusUnauthorized, "", "log in, or send an API token (Authorization: Bearer ...)"}
		case !csrfOK(r, id):
			err = &httpError{http.StatusForbidden, "csrf", "missing or wrong CSRF token (X-CSRF-Token)"}
		default:
			if err = id.scope.allow(a, r); err == nil {
				err = h(w, r, id)
			}
		}
		if err != nil {
			s.writeError(w, r, err)
			return
		}
	})
}

// httpError is an error with its status and the field it is about.
type httpError struct {
	status int
	field  string
	msg    string
}

func (e *httpError) Error() string { return e.msg }

func badRequest(field, format string, args ...any) error {
	return &httpError{http.StatusBadRequest, field, fmt.Sprintf(format, args...)}
}

// classify maps an error to its status and field.
func classify(err error) (int, string, string) {
	var he *httpError
	var fe *domains.FieldError
	var qe *errQuery
	var mbe *http.MaxBytesError
	var fle *operate.FlushError
	var afe *accounts.FieldError
	var dfe *decisions.FieldError
	switch {
	case errors.As(err, &he):
		return he.status, he.field, he.msg
	case errors.As(err, &fe):
		return http.StatusBadRequest, fe.Field, fe.Error()
	case errors.As(err, &qe):
		return http.StatusBadRequest, qe.field, qe.Error()
	case errors.As(err, &mbe):
		return http.StatusRequestEntityTooLarge, "", "request body too large"
	case errors.As(err, &fle):
		return http.StatusBadRequest, fle.Field, fle.Error()
	case errors.As(err, &afe):
		return http.StatusBadRequest, afe.Field, afe.Error()
	case errors.As(err, &dfe):
		return http.StatusBadRequest, dfe.Field, dfe.Error()
	case errors.Is(err, decisions.ErrBadFilter):
		return http.StatusBadRequest, "", err.Error()
	case errors.Is(err, decisions.ErrTooBroad):
		return http.StatusUnprocessableEntity, "", err.Error()
	case errors.Is(err, accounts.ErrRevision):
		return http.StatusConflict, "revision", err.Error() + "; reload and apply your change again"
	case errors.Is(err, accounts.ErrNotFound):
		return http.StatusNotFound, "", err.Error()
	case errors.Is(err, domains.ErrPolicy):
		return http.StatusBadRequest, "", err.Error()
	case errors.Is(err, domains.ErrRevision):
		return http.StatusConflict, "revision", err.Error() + "; reload and apply your change again"
	case errors.Is(err, operate.ErrUnparsed):
		return http.StatusConflict, "policy", err.Error()
	case errors.Is(err, operate.ErrNoPolicy), errors.Is(err, operate.ErrNotListed), errors.Is(err, jetstream.ErrKeyNotFound):
		return http.StatusNotFound, "", err.Error()
	case errors.Is(err, operate.ErrUnavailable), errors.Is(err, domains.ErrListIncomplete):
		return http.StatusServiceUnavailable, "", err.Error()
	case errors.Is(err, operate.ErrNotRecorded):
		return http.StatusInternalServerError, "", err.Error()
	}
	return http.StatusBadGateway, "", err.Error()
}

func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	status, field, msg := classify(err)
	if status >= 500 {
		s.log.Error("console request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	body := map[string]string{"error": msg}
	if field != "" {
		body["field"] = field
	}
	writeJSON(w, status, body)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// decodeJSON reads a request body strictly.
func decodeJSON(r *http.Request, v any) error {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return err
		}
		var ute *json.UnmarshalTypeError
		if errors.As(err, &ute) && ute.Field != "" {
			return badRequest(ute.Field, "%s: want %s", ute.Field, ute.Type)
		}
		if f, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
			return badRequest(strings.Trim(f, `"`), "unknown field %s", f)
		}
		return badRequest("", "body: %v", err)
	}
	// Exactly one JSON document: anything but white space after it is
	// refused rather than ignored.
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return badRequest("", "body: one JSON document, and nothing after it")
	}
	return nil
}

// statusRecorder notes the status for the request counter.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

// Handler is the console's whole HTTP interface.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	s.routesAPI(mux)
	s.routesUI(mux)
	static, _ := fs.Sub(files, "web/static")
	mux.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(static)))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "same-origin")
		h.Set("X-Frame-Options", "DENY")
		if _, https := s.clientOf(r); https {
			h.Set("Strict-Transport-Security", "max-age=31536000")
		}
		rec := &statusRecorder{ResponseWriter: w}
		mux.ServeHTTP(rec, r)
		kind := "ui"
		if strings.HasPrefix(r.URL.Path, "/api/") {
			kind = "api"
		} else if strings.HasPrefix(r.URL.Path, "/static/") {
			kind = "static"
		}
		st := rec.status
		if st == 0 {
			st = http.StatusOK
		}
		s.m.requests.WithLabelValues(kind, fmt.Sprintf("%dxx", st/100)).Inc()
	})
}
