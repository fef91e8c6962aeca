package smtpprobe_test

import (
	"context"
	"fmt"
	"time"

	"github.com/callout-mail/callout/services/prober/smtpprobe"
	"github.com/callout-mail/callout/shared/smtptest"
)

// One callout's dialogue by hand: banner, EHLO, MAIL FROM:<> with the
// RCPT pipelined (the server offers PIPELINING), another RCPT, QUIT. No
// message is ever sent. (The prober's callout package runs this with the
// catch-all and control probes, limits and connection reuse.)
func Example() {
	dest, err := smtptest.Start("127.0.0.1:0", smtptest.Config{Mailboxes: []string{"alice@example.org"}})
	if err != nil {
		panic(err)
	}
	defer dest.Close()
	ctx := context.Background()
	cfg := smtpprobe.Config{ConnectTimeout: time.Second, BannerTimeout: time.Second, CommandTimeout: time.Second, HeloName: "verifier.example"}
	c, banner, err := smtpprobe.Dial(ctx, dest.Addr(), cfg)
	if err != nil {
		panic(err)
	}
	defer c.Close()
	fmt.Println(banner.Code)
	if _, err := c.Hello(ctx); err != nil {
		panic(err)
	}
	mail, rcpt, _, err := c.MailRcpt(ctx, "", "alice@example.org")
	if err != nil {
		panic(err)
	}
	fmt.Println(mail.Code, rcpt.Code)
	unknown, err := c.Rcpt(ctx, "nobody@example.org")
	if err != nil {
		panic(err)
	}
	fmt.Println(unknown.Code, unknown.Enhanced)
	c.Quit(ctx)
	// Output:
	// 220
	// 250 250
	// 550 5.1.1
}
