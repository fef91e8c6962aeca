package operate

import (
	"strings"
	"testing"
)

func TestParseList(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"a\nb\n\n# c\nb\n", "a,b"},
		{"address,name\na@x.test,A\n\"b\",B\n", "a@x.test,b"},
		{"mailbox;comment\nx;1\ny;2\n", "x,y"},
		{"  spaced  \r\nnext\r\n", "spaced,next"},
	} {
		got, err := ParseList(c.in)
		if err != nil || strings.Join(got, ",") != c.want {
			t.Errorf("ParseList(%q) = %v, %v; want %s", c.in, got, err, c.want)
		}
	}
}

func TestMergeAndRemove(t *testing.T) {
	got := mergeList("x.test", []string{"alice", "Bob"}, []string{"bob@x.test", "carol", "CAROL"})
	if strings.Join(got, ",") != "alice,Bob,carol" {
		t.Fatalf("merge: %v", got)
	}
	got, err := removeFromList("x.test", got, "ALICE@x.test")
	if err != nil || strings.Join(got, ",") != "Bob,carol" {
		t.Fatalf("remove: %v %v", got, err)
	}
	if _, err := removeFromList("x.test", got, "dave"); err == nil {
		t.Fatal("removed an entry not on the list")
	}
}
