package main

// Console users and API tokens: the same records the console keeps, each
// change audited as the NATS user that made it.

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/callout-mail/callout/shared/accounts"
	"github.com/callout-mail/callout/shared/operate"
)

// hash is the bcrypt hash of the password in file (its first line), or
// of a new one it shows.
func (a *app) hash(file string) (string, error) {
	pw, err := a.password(file)
	if err != nil {
		return "", err
	}
	return accounts.HashPassword(pw, 0)
}

// password reads a password from a file (its first line), or makes one
// and says so.
func (a *app) password(file string) (string, error) {
	if file == "" {
		b := make([]byte, 15)
		_, _ = rand.Read(b)
		pw := base64.RawURLEncoding.EncodeToString(b)
		fmt.Fprintf(a.out, "password: %s\n", pw)
		return pw, nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", err
	}
	pw, _, _ := strings.Cut(string(b), "\n")
	return strings.TrimRight(pw, "\r"), nil
}

func (a *app) user(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return errors.New("usage: user ls | add NAME -role R [flags] | set NAME [flags] | rm NAME")
	}
	kv, err := a.op.Accounts(ctx)
	if err != nil {
		return err
	}
	switch args[0] {
	case "ls":
		users, err := accounts.List[accounts.User](ctx, kv, "user.")
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(a.out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "USER\tROLE\tDOMAINS\tOWNER\tSTATE")
		for _, u := range users {
			role, state := string(u.Role), "active"
			if u.ReadOnly {
				role += " (read-only)"
			}
			if u.Disabled {
				state = "disabled"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", u.Name, role, strings.Join(u.Domains, ","), u.Owner, state)
		}
		return tw.Flush()
	case "add", "set":
		fs := flag.NewFlagSet("user "+args[0], flag.ContinueOnError)
		role := fs.String("role", "", "admin, reseller or domain")
		doms := fs.String("domains", "", "the user's domains, comma-separated (reseller, domain)")
		ro := fs.Bool("read-only", false, "may read, change nothing")
		rw := fs.Bool("read-write", false, "set: no longer read-only")
		owner := fs.String("owner", "", "add: the reseller that manages this domain user")
		disable := fs.Bool("disable", false, "set: the user cannot log in, its tokens stop working")
		enable := fs.Bool("enable", false, "set: the user can log in again")
		pwFile := fs.String("password-file", "", "the password, on the first line of this file (add: default a new one, shown once)")
		newPW := fs.Bool("new-password", false, "set: make a new password, shown once")
		pos, err := parseMixed(fs, args[1:])
		if err != nil || len(pos) != 1 {
			return fmt.Errorf("usage: user %s NAME [flags]", args[0])
		}
		if args[0] == "add" {
			u := accounts.User{Name: pos[0], Role: accounts.Role(*role), ReadOnly: *ro, Domains: split(*doms), Owner: *owner,
				Created: time.Now().UTC(), CreatedBy: a.who}
			if u.Hash, err = a.hash(*pwFile); err != nil {
				return err
			}
			_, err = a.op.PutUser(ctx, a.who, u, 0, "")
			return err
		}
		u, err := accounts.GetUser(ctx, kv, pos[0])
		if err != nil {
			return err
		}
		rev, note := u.Revision, ""
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		if set["role"] {
			u.Role = accounts.Role(*role)
		}
		if set["domains"] {
			u.Domains = split(*doms)
		}
		if *ro {
			u.ReadOnly = true
		}
		if *rw {
			u.ReadOnly = false
		}
		if *disable {
			u.Disabled = true
		}
		if *enable {
			u.Disabled = false
		}
		if *pwFile != "" || *newPW {
			if u.Hash, err = a.hash(*pwFile); err != nil {
				return err
			}
			note = "password reset"
		}
		_, err = a.op.PutUser(ctx, a.who, u, rev, note)
		return err
	case "rm":
		if len(args) != 2 {
			return errors.New("usage: user rm NAME")
		}
		u, err := accounts.GetUser(ctx, kv, args[1])
		if err != nil {
			return err
		}
		return a.op.RemoveUser(ctx, a.who, args[1], u.Revision)
	}
	return fmt.Errorf("unknown user command %q", args[0])
}

func (a *app) token(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return errors.New("usage: token ls [-user NAME] | add USER [flags] | rm ID")
	}
	kv, err := a.op.Accounts(ctx)
	if err != nil {
		return err
	}
	switch args[0] {
	case "ls":
		fs := flag.NewFlagSet("token ls", flag.ContinueOnError)
		user := fs.String("user", "", "only this user's")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		toks, err := accounts.List[accounts.Token](ctx, kv, "token.")
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(a.out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tUSER\tROLE\tDOMAINS\tEXPIRES\tLABEL")
		for _, t := range toks {
			if *user != "" && t.User != *user {
				continue
			}
			role := string(t.Role)
			if t.ReadOnly {
				role += " (read-only)"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", t.ID, t.User, role, strings.Join(t.Domains, ","), t.Expires.Format(time.RFC3339), t.Label)
		}
		return tw.Flush()
	case "add":
		fs := flag.NewFlagSet("token add", flag.ContinueOnError)
		role := fs.String("role", "", "at most the user's role (default: the user's)")
		doms := fs.String("domains", "", "some of the user's domains, comma-separated (default: all of them)")
		ro := fs.Bool("read-only", false, "may read, change nothing")
		days := fs.Int("days", 90, "days until it expires")
		label := fs.String("label", "", "what it is for")
		pos, err := parseMixed(fs, args[1:])
		if err != nil || len(pos) != 1 {
			return errors.New("usage: token add USER [flags]")
		}
		u, err := accounts.GetUser(ctx, kv, pos[0])
		if err != nil {
			return err
		}
		now := time.Now().UTC()
		secret, id, hash := accounts.NewToken()
		t := accounts.Token{ID: id, User: u.Name, Label: *label, Role: accounts.Role(*role), ReadOnly: *ro, Domains: split(*doms),
			Expires: now.Add(time.Duration(*days) * 24 * time.Hour), Created: now, Hash: hash}
		if t, err = t.Narrow(u, now); err != nil {
			return err
		}
		if err := a.op.AddToken(ctx, a.who, t); !operate.Made(err) {
			return err
		}
		fmt.Fprintf(a.out, "token %s of %s (shown once): %s\n", id, u.Name, secret)
		return nil
	case "rm":
		if len(args) != 2 {
			return errors.New("usage: token rm ID")
		}
		return a.op.RevokeToken(ctx, a.who, args[1])
	}
	return fmt.Errorf("unknown token command %q", args[0])
}
