package ingest

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/d--j/go-milter"

	"github.com/callout-mail/callout/shared/decisions"
	"github.com/callout-mail/callout/shared/domains"
	"github.com/callout-mail/callout/shared/natstest"
	"github.com/callout-mail/callout/shared/smtptest"
	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/waitfor"
)

// The milter front-end answers each recipient of one transaction with
// the ingest's decision (a known mailbox, an unknown one, a greylisting
// destination), and its answers are in the decision log as milter's.
func TestMilterThroughTheIngest(t *testing.T) {
	known := destination(t, smtptest.Config{Mailboxes: []string{"alice@milter.test"}})
	grey := destination(t, smtptest.Config{Rcpt: func(_, _ string) string { return "451 4.7.1 greylisted, try later" }})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cfg := ingestConfig()
	cfg.MilterAddr = addr
	sys := startSystem(t, cfg)
	sys.policy(t, "milter.test", domains.Policy{Route: []string{known.Addr()}})
	sys.policy(t, "grey.test", domains.Policy{Route: []string{grey.Addr()}})
	var s *milter.ClientSession
	waitfor.Cond(t, 10*time.Second, func() bool {
		s, err = milter.NewClient("tcp", addr, milter.WithReadTimeout(20*time.Second)).Session(milter.NewMacroBag())
		return err == nil
	})
	defer s.Close()
	if _, err := s.Conn("mx.sender.example", milter.FamilyInet, 40000, "192.0.2.44"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Helo("mx.sender.example"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Mail("friend@sender.example", ""); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		rcpt string
		code uint16
		text string
	}{
		{"alice@milter.test", 0, ""},
		{"nobody@milter.test", 550, "550 5.1.1 <nobody@milter.test>: Recipient address rejected: User unknown"},
		{"someone@grey.test", 450, "450 4."},
	} {
		act, err := s.Rcpt(tt.rcpt, "")
		if err != nil {
			t.Fatalf("%s: %v", tt.rcpt, err)
		}
		if tt.code == 0 && act.StopProcessing() || tt.code != 0 && (act.SMTPCode != tt.code || !strings.HasPrefix(strings.TrimSpace(act.SMTPReply), tt.text)) {
			t.Errorf("%s: %v %d %q, want %d %q", tt.rcpt, act, act.SMTPCode, act.SMTPReply, tt.code, tt.text)
		}
	}
	// In the log, with what the MTA told of the session.
	js := natstest.JetStream(t, sys.nc)
	waitfor.Cond(t, 10*time.Second, func() bool {
		for _, r := range records(t, js) {
			if r.Recipient == "nobody@milter.test" && r.Via == decisions.ViaMilter && r.Client == "192.0.2.44" && r.Helo == "mx.sender.example" &&
				r.Sender == "friend@sender.example" && r.Action == verdict.Reject {
				return true
			}
		}
		return false
	})
}
