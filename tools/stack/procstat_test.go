package stack

import (
	"os"
	"slices"
	"testing"
)

func TestReadProcCPU(t *testing.T) {
	// Burn a little CPU so that this process has some.
	x := 0
	for i := 0; i < 50_000_000; i++ {
		x += i
	}
	_ = x
	c, err := ReadProcCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if c.PPID != os.Getppid() || c.Self <= 0 {
		t.Fatalf("own stat %+v, parent %d", c, os.Getppid())
	}
	if !slices.Contains(Pids(), os.Getpid()) {
		t.Fatal("own pid not listed")
	}
	if _, err := ReadProcCPU(-1); err == nil {
		t.Fatal("a pid that cannot exist was read")
	}
}
