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
