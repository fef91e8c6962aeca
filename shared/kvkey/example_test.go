package kvkey_test

import (
	"fmt"

	"github.com/callout-mail/callout/shared/kvkey"
	"github.com/callout-mail/callout/shared/verdict"
)

// Keys of the cache bucket: one per address and view (and probe sender),
// one per domain fact, one per flush scope. Tokens keep a key readable
// with `nats kv ls` and free of the subject separators.
func ExampleAddress() {
	fmt.Println(kvkey.Address("example.org", "alice", verdict.Recipient, ""))
	fmt.Println(kvkey.Address("example.org", "a.b", verdict.Sender, "verify@gw.example"))
	fmt.Println(kvkey.Domain("example.org", verdict.Recipient, kvkey.FactCatchAll))
	fmt.Println(kvkey.FlushAddress("example.org", "Alice"))
	k, err := kvkey.Parse(kvkey.Address("example.org", "a.b", verdict.Sender, "verify@gw.example"))
	fmt.Println(k.Local, k.Domain, k.Purpose, k.Sender, err)
	// Output:
	// addr.example/org.alice.rcpt
	// addr.example/org.a/b.sender.verify=40gw/example
	// domain.example/org.rcpt.catchall
	// flush.addr.example/org.alice
	// a.b example.org sender verify@gw.example <nil>
}
