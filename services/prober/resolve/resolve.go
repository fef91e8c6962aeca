// Package resolve finds the hosts to call for a domain: the configured route,
// or MX records by preference with the RFC 5321 fallback to the domain's own
// address records. A null MX (RFC 7505) or a domain that does not exist
// means the domain takes no mail; a lookup failure is temporary.
package resolve

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"
	"time"
)

var (
	// ErrNoMail: the domain does not exist or publishes a null MX.
	ErrNoMail = errors.New("domain accepts no mail")
	// ErrNullMX: the domain says it takes no mail (RFC 7505). An ErrNoMail.
	ErrNullMX = fmt.Errorf("%w: null MX", ErrNoMail)
	// ErrNoDomain: DNS says the domain does not exist (NXDOMAIN), which a
	// newly registered domain may still be told. An ErrNoMail.
	ErrNoDomain = fmt.Errorf("%w: no such domain", ErrNoMail)
	// ErrTemporary: DNS did not answer usefully; try later.
	ErrTemporary = errors.New("temporary DNS failure")
)

// Lookuper is the part of net.Resolver used here, so tests can point it
// at a local DNS server.
type Lookuper interface {
	LookupMX(ctx context.Context, name string) ([]*net.MX, error)
	LookupHost(ctx context.Context, host string) ([]string, error)
}

// Resolver finds destination hosts by MX.
type Resolver struct {
	DNS     Lookuper
	Port    int // SMTP port of MX hosts, 25 in production
	Timeout time.Duration
}

// New returns a resolver using server ("host:port") for DNS, or the
// system's resolver when server is empty.
func New(server string, port int) *Resolver {
	r := &net.Resolver{PreferGo: true}
	if server != "" {
		r.Dial = func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, server)
		}
	}
	if port == 0 {
		port = 25
	}
	return &Resolver{DNS: r, Port: port, Timeout: 10 * time.Second}
}

// MX returns ip:port for each address of each MX of domain, by preference,
// or of the domain itself when it has address records but no MX. Host names
// are resolved here, through the same DNS, so that dialing needs no lookup.
func (r *Resolver) MX(ctx context.Context, domain string) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, r.Timeout)
	defer cancel()
	mxs, err := r.DNS.LookupMX(ctx, domain)
	if err != nil {
		var de *net.DNSError
		if !errors.As(err, &de) || !de.IsNotFound {
			return nil, fmt.Errorf("%w: MX %s: %v", ErrTemporary, domain, err)
		}
		// No MX: the domain's own A/AAAA, if it exists at all.
		addrs, herr := r.DNS.LookupHost(ctx, domain)
		if herr != nil {
			if errors.As(herr, &de) && de.IsNotFound {
				return nil, fmt.Errorf("%w: %s does not exist", ErrNoDomain, domain)
			}
			return nil, fmt.Errorf("%w: A/AAAA %s: %v", ErrTemporary, domain, herr)
		}
		return r.hostPorts(addrs), nil
	}
	if len(mxs) == 1 && (mxs[0].Host == "." || mxs[0].Host == "") {
		return nil, fmt.Errorf("%w: %s publishes a null MX", ErrNullMX, domain)
	}
	sort.SliceStable(mxs, func(i, j int) bool { return mxs[i].Pref < mxs[j].Pref })
	var hosts []string
	var lastErr error
	for _, mx := range mxs {
		h := strings.TrimSuffix(mx.Host, ".")
		if h == "" {
			continue
		}
		addrs, err := r.DNS.LookupHost(ctx, h)
		if err != nil {
			lastErr = err
			continue
		}
		hosts = append(hosts, r.hostPorts(addrs)...)
	}
	if len(hosts) == 0 {
		if lastErr != nil {
			return nil, fmt.Errorf("%w: no address for the MX hosts of %s: %v", ErrTemporary, domain, lastErr)
		}
		return nil, fmt.Errorf("%w: %s has no usable MX", ErrNullMX, domain)
	}
	return hosts, nil
}

func (r *Resolver) hostPorts(addrs []string) []string {
	out := make([]string, 0, len(addrs))
	for _, a := range addrs {
		out = append(out, r.hostPort(a))
	}
	return out
}

func (r *Resolver) hostPort(h string) string { return net.JoinHostPort(h, strconv.Itoa(r.Port)) }
