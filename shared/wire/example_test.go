package wire_test

import (
	"fmt"

	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/wire"
)

// Messages travel as msgpack with a version; Decode checks the version
// and the required fields, and refuses garbage with an error.
func ExampleDecode() {
	b, err := wire.Encode(&wire.VerifyRequest{Address: "alice@example.org", Purpose: verdict.Recipient, TimeoutMS: 5000})
	if err != nil {
		panic(err)
	}
	var req wire.VerifyRequest
	fmt.Println(wire.Decode(b, &req), req.Address, req.Purpose, req.TimeoutMS)
	fmt.Println(wire.Decode([]byte{0xc1}, &req) != nil)
	// Output:
	// <nil> alice@example.org recipient 5000
	// true
}

// The JSON form is the same message, for the nats CLI and scripts.
func ExampleDecodeJSON() {
	var req wire.VerifyRequest
	err := wire.DecodeJSON([]byte(`{"address":"bob@example.org","timeout_ms":9223372036854775807}`), &req)
	fmt.Println(err, req.Address, req.Timeout(0, 25e9))
	// Output:
	// <nil> bob@example.org 25s
}
