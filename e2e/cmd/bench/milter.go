package main

// Section 7m: the milter path. Each worker is one MTA session (a milter
// connection, as Postfix and Sendmail open per SMTP session): connect
// and HELO once, then transactions of eight recipients (MAIL, eight
// RCPTs, abort), every RCPT a cached valid address. Measured against a
// bare milter server in this process, the same library answering
// continue with the same negotiation: the ceiling of the path.

import (
	"context"
	"fmt"
	"net"
	"sync/atomic"
	"time"

	"github.com/d--j/go-milter"
)

// milterEcho is the ceiling: a milter server that continues every step.
func milterEcho() (net.Listener, func(), error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, err
	}
	srv := milter.NewServer(
		milter.WithMilter(func() milter.Milter { return milter.NoOpMilter{} }),
		milter.WithProtocol(milter.OptNoBody|milter.OptNoHeaders|milter.OptNoEOH|milter.OptNoUnknown|milter.OptNoData|
			milter.OptNoConnReply|milter.OptNoHeloReply),
	)
	go func() { _ = srv.Serve(ln) }()
	return ln, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}, nil
}

// milterLoad is c sessions to addr, each asking for the cached addresses
// in turn for d.
func milterLoad(c int, d time.Duration, addr string, addrs []string, n *atomic.Int64) (float64, latencies, error) {
	sessions := make([]*milter.ClientSession, c)
	client := milter.NewClient("tcp", addr, milter.WithReadTimeout(30*time.Second))
	for i := range sessions {
		s, err := client.Session(milter.NewMacroBag())
		if err != nil {
			return 0, nil, err
		}
		defer s.Close()
		if _, err := s.Conn("mail.sender.example", milter.FamilyInet, 52001, "192.0.2.10"); err != nil {
			return 0, nil, err
		}
		if _, err := s.Helo("mail.sender.example"); err != nil {
			return 0, nil, err
		}
		sessions[i] = s
	}
	return load(c, d, func(w, i int) error {
		n.Add(1)
		s := sessions[w]
		if i%8 == 0 {
			if i > 0 {
				if err := s.Abort(nil); err != nil {
					return err
				}
			}
			if _, err := s.Mail("someone@sender.example", ""); err != nil {
				return err
			}
		}
		act, err := s.Rcpt(addrs[(w*7919+i)%len(addrs)], "")
		if err == nil && act.Type != milter.ActionContinue {
			err = fmt.Errorf("milter answer %v %d %q for a cached valid address", act.Type, act.SMTPCode, act.SMTPReply)
		}
		return err
	})
}

func (b *bench) milterPersistent(c int, addrs []string, echo string) error {
	return b.measurePath("7m milter", "milter", c, b.milterAddr, echo, func(addr string, n *atomic.Int64) (float64, latencies, error) {
		return milterLoad(c, 3*time.Second, addr, addrs, n)
	})
}
