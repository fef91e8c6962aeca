package console

// The API's users and tokens endpoints.

import (
	"net/http"

	"github.com/callout-mail/callout/shared/accounts"
)

var resellerRead = access{min: accounts.Reseller}

func (s *Server) routesAccounts(mux *http.ServeMux) {
	mux.Handle("GET /api/users", s.api(resellerRead, func(w http.ResponseWriter, r *http.Request, id *identity) error {
		writeJSON(w, http.StatusOK, s.visibleUsers(id))
		return nil
	}))
	mux.Handle("POST /api/users", s.api(resellerWrite, func(w http.ResponseWriter, r *http.Request, id *identity) error {
		var f userForm
		if err := decodeJSON(r, &f); err != nil {
			return err
		}
		v, err := s.createUser(r, id, f)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusCreated, v)
		return nil
	}))
	mux.Handle("GET /api/users/{name}", s.api(resellerRead, func(w http.ResponseWriter, r *http.Request, id *identity) error {
		u, err := s.managedUser(id, r.PathValue("name"))
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, viewUser(u))
		return nil
	}))
	mux.Handle("PATCH /api/users/{name}", s.api(resellerWrite, func(w http.ResponseWriter, r *http.Request, id *identity) error {
		var f userForm
		if err := decodeJSON(r, &f); err != nil {
			return err
		}
		v, err := s.updateUser(r, id, r.PathValue("name"), f)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, v)
		return nil
	}))
	mux.Handle("DELETE /api/users/{name}", s.api(resellerWrite, func(w http.ResponseWriter, r *http.Request, id *identity) error {
		rev, err := revisionParam(r)
		if err != nil {
			return err
		}
		if err := s.deleteUser(r, id, r.PathValue("name"), rev); err != nil {
			return err
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	}))
	mux.Handle("GET /api/tokens", s.api(anyRead, func(w http.ResponseWriter, r *http.Request, id *identity) error {
		writeJSON(w, http.StatusOK, s.visibleTokens(id))
		return nil
	}))
	mux.Handle("POST /api/tokens", s.api(anyRead, func(w http.ResponseWriter, r *http.Request, id *identity) error {
		var f tokenForm
		if err := decodeJSON(r, &f); err != nil {
			return err
		}
		t, err := s.createToken(r, id, f)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusCreated, t)
		return nil
	}))
	mux.Handle("DELETE /api/tokens/{id}", s.api(anyRead, func(w http.ResponseWriter, r *http.Request, id *identity) error {
		if err := s.revokeToken(r, id, r.PathValue("id")); err != nil {
			return err
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	}))
}
