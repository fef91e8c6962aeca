package verdict_test

import (
	"fmt"

	"github.com/callout-mail/callout/shared/verdict"
)

// Decide is the one place a verdict becomes the MTA's answer. Only a
// definite user unknown (a 5xx from the destination, or the operator's
// list) rejects; a refusal of the verifier is accepted, a 4xx deferred.
func ExampleDecide() {
	pol := verdict.Policy{Purpose: verdict.Recipient}
	for _, v := range []verdict.Verdict{
		{Kind: verdict.KindAddress, Address: "bob@example.org", Status: verdict.Invalid, Code: 550, Enhanced: "5.1.1"},
		{Kind: verdict.KindAddress, Address: "bob@example.org", Status: verdict.Invalid, Code: 450},
		{Kind: verdict.KindAddress, Address: "bob@example.org", Status: verdict.Unverifiable, Code: 550, Enhanced: "5.7.1"},
		{Kind: verdict.KindAddress, Address: "bob@example.org", Status: verdict.TempFail, Code: 451},
	} {
		d := verdict.Decide(v, pol)
		fmt.Println(d.Action, d.Code, d.Enhanced)
	}
	// Output:
	// reject 550 5.1.1
	// defer 450 4.4.3
	// accept 250 2.1.5
	// defer 450 4.4.3
}
