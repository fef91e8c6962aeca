package audit

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

// A policy change's event names what changed in its lists, never the
// lists: it fits in a message however long they are.
func TestPolicyChangeSummarizesLists(t *testing.T) {
	list := func(from, to int) []string {
		var l []string
		for i := from; i < to; i++ {
			l = append(l, fmt.Sprintf("user%05d", i))
		}
		return l
	}
	before, _ := json.Marshal(map[string]any{"mode": "static", "mailboxes": list(0, 30000)})
	after, _ := json.Marshal(map[string]any{"mode": "static", "mailboxes": list(100, 30200), "bypass": []string{"abuse"}})
	var ev Event
	PolicyChange(&ev, before, after)
	b, _ := json.Marshal(ev)
	if len(b) > 8<<10 {
		t.Fatalf("event of %d bytes", len(b))
	}
	m := ev.Lists["mailboxes"]
	if m.Count != 30100 || m.AddedCount != 200 || m.RemovedCount != 100 || len(m.Added) != ListSample || m.Added[0] != "user30000" || m.Removed[0] != "user00000" {
		t.Fatalf("mailboxes change %+v", m)
	}
	if by := ev.Lists["bypass"]; by.Count != 1 || by.AddedCount != 1 || by.Added[0] != "abuse" {
		t.Fatalf("bypass change %+v", by)
	}
	if !strings.Contains(string(ev.Before), `"mailboxes":30000`) || !strings.Contains(string(ev.After), `"mailboxes":30100`) {
		t.Fatalf("before %s after %s", ev.Before, ev.After)
	}
	// A removal; and a stored value that is not JSON is kept, as a string.
	var rm Event
	PolicyChange(&rm, after, nil)
	if rm.After != nil || rm.Lists["mailboxes"].RemovedCount != 30100 || rm.Lists["mailboxes"].Count != 0 {
		t.Fatalf("removal %+v", rm.Lists)
	}
	var odd Event
	PolicyChange(&odd, []byte("not json"), []byte(`{"mode":"off"}`))
	if string(odd.Before) != `"not json"` || odd.Lists != nil {
		t.Fatalf("odd %+v", odd)
	}
}
