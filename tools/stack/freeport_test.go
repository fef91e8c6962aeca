package stack

import "testing"

// Ports picked one after another are never the same, even when the kernel
// offers a port it just gave out.
func TestFreePortDistinct(t *testing.T) {
	seen := map[int]bool{}
	for i := 0; i < 500; i++ {
		p, err := FreePort()
		if err != nil {
			t.Fatal(err)
		}
		if seen[p] {
			t.Fatalf("port %d handed out twice", p)
		}
		seen[p] = true
	}
}
