package callout

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"testing"
	"time"

	"github.com/callout-mail/callout/services/prober/destination"
	"github.com/callout-mail/callout/services/prober/smtpprobe"
	"github.com/callout-mail/callout/shared/smtptest"
	"github.com/callout-mail/callout/shared/verdict"
)

// selfSigned makes a throw-away certificate for 127.0.0.1.
func selfSigned(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "mx.test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func TestStartTLS(t *testing.T) {
	cert := selfSigned(t)
	s := server(t, smtptest.Config{Mailboxes: []string{"alice@example.org"}, TLS: &tls.Config{Certificates: []tls.Certificate{cert}}})
	cfg := smtpprobe.Config{ConnectTimeout: time.Second, BannerTimeout: time.Second, CommandTimeout: time.Second, StartTLS: true}

	// Opportunistic: a self-signed certificate is fine by default.
	c, _, err := smtpprobe.Dial(context.Background(), s.Addr(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if rep, err := c.Hello(context.Background()); err != nil || rep.Code != 250 || !c.TLS() {
		t.Fatalf("STARTTLS: %v %v tls=%v", rep, err, c.TLS())
	}
	if rep, err := c.Mail(context.Background(), ""); err != nil || rep.Code != 250 {
		t.Fatalf("MAIL over TLS: %v %v", rep, err)
	}
	c.Quit(context.Background())

	// The whole callout works over TLS.
	v := New(Config{SMTP: cfg, RandomSecret: secret}, destination.NewPool(destination.Config{Rate: 1000}, nil))
	if r := v.Verify(context.Background(), Target{Address: addr(t, "alice@example.org"), Hosts: []string{s.Addr()}}); r.Address.Status != verdict.Valid {
		t.Fatalf("callout over TLS: %+v", r.Address)
	}

	// With verification on, the self-signed certificate fails: tempfail, never invalid.
	strict := cfg
	strict.TLSVerify = true
	v = New(Config{SMTP: strict, RandomSecret: secret}, destination.NewPool(destination.Config{Rate: 1000}, nil))
	r := v.Verify(context.Background(), Target{Address: addr(t, "nobody@example.org"), Hosts: []string{s.Addr()}})
	if r.Address.Status != verdict.TempFail {
		t.Fatalf("TLS failure: %+v", r.Address)
	}
}

// A server that offers STARTTLS and refuses it (Postfix with broken TLS
// says 454) is spoken to in plaintext on the same connection; the host is
// remembered, and the command count stays bounded.
func TestStartTLSRefused(t *testing.T) {
	s := server(t, smtptest.Config{Mailboxes: []string{"alice@example.org"}, StartTLS: "454 4.7.0 TLS not available due to local problem"})
	cfg := smtpprobe.Config{ConnectTimeout: time.Second, BannerTimeout: time.Second, CommandTimeout: time.Second, StartTLS: true}
	v := New(Config{SMTP: cfg, RandomSecret: secret, DialogueTimeout: 2 * time.Second}, destination.NewPool(destination.Config{Rate: 1000, MaxConns: 2, TLSFallback: time.Hour}, nil))
	r := v.Verify(context.Background(), Target{Address: addr(t, "alice@example.org"), Hosts: []string{s.Addr()}, SkipRandom: true})
	if r.Address.Status != verdict.Valid {
		t.Fatalf("callout after refused STARTTLS: %+v", r.Address)
	}
	// EHLO, STARTTLS, MAIL, RCPT, QUIT.
	if n := s.Commands(""); n > 6 || s.Commands("STARTTLS") != 1 || s.Conns() != 1 {
		t.Fatalf("%d commands, %d STARTTLS, %d connections", n, s.Commands("STARTTLS"), s.Conns())
	}
	r = v.Verify(context.Background(), Target{Address: addr(t, "bob@example.org"), Hosts: []string{s.Addr()}, SkipRandom: true})
	if r.Address.Status != verdict.Invalid || s.Commands("STARTTLS") != 1 {
		t.Fatalf("second callout: %+v, %d STARTTLS", r.Address, s.Commands("STARTTLS"))
	}
}

// A failed handshake (a server that speaks only TLS 1.0) leaves the
// session in an unknown state: a new plaintext connection carries on.
func TestStartTLSHandshakeFails(t *testing.T) {
	cert := selfSigned(t)
	s := server(t, smtptest.Config{Mailboxes: []string{"alice@example.org"},
		TLS: &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS10}})
	cfg := smtpprobe.Config{ConnectTimeout: time.Second, BannerTimeout: time.Second, CommandTimeout: time.Second, StartTLS: true}
	v := New(Config{SMTP: cfg, RandomSecret: secret}, destination.NewPool(destination.Config{Rate: 1000, MaxConns: 2, TLSFallback: time.Hour}, nil))
	r := v.Verify(context.Background(), Target{Address: addr(t, "alice@example.org"), Hosts: []string{s.Addr()}, SkipRandom: true})
	if r.Address.Status != verdict.Valid || s.Conns() != 2 || s.Commands("STARTTLS") != 1 {
		t.Fatalf("%+v, %d connections, %d STARTTLS", r.Address, s.Conns(), s.Commands("STARTTLS"))
	}
	r = v.Verify(context.Background(), Target{Address: addr(t, "nobody@example.org"), Hosts: []string{s.Addr()}, SkipRandom: true})
	if r.Address.Status != verdict.Invalid || s.Commands("STARTTLS") != 1 {
		t.Fatalf("second callout: %+v, %d STARTTLS", r.Address, s.Commands("STARTTLS"))
	}
}
