package address_test

import (
	"fmt"

	"github.com/callout-mail/callout/shared/address"
)

// Parse normalizes what an MTA passes on and refuses what could inject a
// line into an SMTP dialogue; forms real mail uses but a callout must not
// send are refused without being broken (never a reject).
func ExampleParse() {
	a, err := address.Parse("<Alice@Example.ORG.>")
	fmt.Println(a, err)
	_, err = address.Parse("bob@example.org\r\nRSET")
	fmt.Println(address.Broken(err))
	_, err = address.Parse("user@[192.0.2.1]")
	fmt.Println(err != nil, address.Broken(err))
	// Output:
	// Alice@example.org <nil>
	// true
	// true false
}
