// Command console serves the operators' web interface and HTTP API.
//
//	console                      run (settings from CALLOUT_CONSOLE_* variables)
//	console hash-password        read a password on stdin, print its bcrypt hash
//	console new-token            print a new API token and the SHA-256 the users file keeps
package main

import (
	"bufio"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/callout-mail/callout/services/console/console"
	"github.com/callout-mail/callout/shared/servicemain"
)

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "hash-password":
			line, err := bufio.NewReader(os.Stdin).ReadString('\n')
			line = strings.TrimRight(line, "\r\n")
			if line == "" {
				fmt.Fprintln(os.Stderr, "console hash-password: give the password on standard input", err)
				os.Exit(2)
			}
			h, err := console.HashPassword(line)
			if err != nil {
				fmt.Fprintln(os.Stderr, "console hash-password:", err)
				os.Exit(1)
			}
			fmt.Println(h)
			return
		case "new-token":
			tok, digest := console.NewToken()
			fmt.Printf("token (give it to the API client): %s\nusers file field (append as :%s): %s\n", tok, digest, digest)
			return
		}
	}
	var cfg console.Config
	servicemain.Main("console", console.EnvPrefix, "the operators' web interface and HTTP API", &cfg,
		func(nc *nats.Conn, reg prometheus.Registerer, log *slog.Logger) (servicemain.Service, error) {
			return console.New(cfg, nc, reg, log)
		})
}
