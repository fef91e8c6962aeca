module github.com/callout-mail/callout/services/prober

go 1.26.0

require (
	github.com/callout-mail/callout/shared v0.0.0
	github.com/miekg/dns v1.1.73
	github.com/sony/gobreaker/v2 v2.4.0
	golang.org/x/time v0.16.0
)

require (
	golang.org/x/net v0.62.0 // indirect
	golang.org/x/sys v0.49.0 // indirect
	golang.org/x/text v0.43.0 // indirect
)

replace github.com/callout-mail/callout/shared => ../../shared
