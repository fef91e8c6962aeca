package domains

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/callout-mail/callout/shared/natstest"
	"github.com/callout-mail/callout/shared/subjects"
	"github.com/callout-mail/callout/shared/waitfor"
)

func listStore(t *testing.T) (*Store, context.Context) {
	t.Helper()
	ns := natstest.Start(t)
	js := natstest.JetStream(t, ns.Connect(t))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	st, err := Bucket(ctx, js, subjects.New(""), 1)
	if err != nil {
		t.Fatal(err)
	}
	return st, ctx
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func mailboxes(n int, prefix string) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s%06d", prefix, i)
	}
	return out
}

// chunkSizes are the sizes of every chunk stored in the lists bucket.
func chunkSizes(t *testing.T, ctx context.Context, st *Store) map[string]int {
	t.Helper()
	out := map[string]int{}
	w, err := st.Lists.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = w.Stop() }()
	for e := range w.Updates() {
		if e == nil {
			return out
		}
		out[e.Key()] = len(e.Value())
	}
	return out
}

// A list of 100,000 mailboxes is stored with no message near the limit of
// one, read back whole by every instance, and looked up as an inline one.
func TestLongList(t *testing.T) {
	st, ctx := listStore(t)
	list := mailboxes(100_000, "user")
	if err := Put(ctx, st, "example.org", Policy{Mode: ModeStatic, Mailboxes: list}); err != nil {
		t.Fatal(err)
	}
	e, err := st.Get(ctx, "example.org")
	if err != nil {
		t.Fatal(err)
	}
	if len(e.Value()) > 16<<10 {
		t.Fatalf("the policy's own value is %d bytes", len(e.Value()))
	}
	sizes := chunkSizes(t, ctx, st)
	total := 0
	for k, n := range sizes {
		if n > chunkMax {
			t.Errorf("chunk %s holds %d bytes", k, n)
		}
		total += n
	}
	if len(sizes) < 16 || total < 100_000*10 {
		t.Fatalf("%d chunks of %d bytes in all", len(sizes), total)
	}
	tab, err := Watch(ctx, st, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	p, ok := tab.Lookup("example.org")
	if !ok || !p.Complete() || p.Count("mailboxes") != 100_000 {
		t.Fatalf("served: complete %v, %d mailboxes", p.Complete(), p.Count("mailboxes"))
	}
	for i, m := range list {
		if !p.Listed(strings.ToUpper(m), "+") || !p.Listed(m+"+tag", "+") {
			t.Fatalf("entry %d (%s) not listed", i, m)
		}
	}
	for _, m := range []string{"user100000", "user", "someone", "user00000"} {
		if p.Listed(m, "+") {
			t.Fatalf("%s is listed", m)
		}
	}
	parsed, err := Parse("example.org", e.Value())
	if err != nil {
		t.Fatal(err)
	}
	if parsed.Complete() {
		t.Fatal("a policy read without its chunks says it is complete")
	}
	whole, err := st.Load(ctx, "example.org", parsed)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(whole.Mailboxes, list) {
		t.Fatalf("Load gave %d entries, want the %d written", len(whole.Mailboxes), len(list))
	}
}

// Adding one entry to a long list writes one chunk and the policy, and
// removes the one chunk it replaces; removing the domain removes them all.
func TestLongListEditOneEntry(t *testing.T) {
	st, ctx := listStore(t)
	list := mailboxes(20_000, "u")
	if err := Put(ctx, st, "example.org", Policy{Mode: ModeStatic, Mailboxes: list}); err != nil {
		t.Fatal(err)
	}
	before := chunkSizes(t, ctx, st)
	e, _ := st.Get(ctx, "example.org")
	if _, err := PutRevision(ctx, st, "example.org", Policy{Mode: ModeStatic, Mailboxes: append(slices.Clone(list), "new")}, e.Revision()); err != nil {
		t.Fatal(err)
	}
	after := chunkSizes(t, ctx, st)
	var added, removed int
	for k := range after {
		if _, ok := before[k]; !ok {
			added++
		}
	}
	for k := range before {
		if _, ok := after[k]; !ok {
			removed++
		}
	}
	if added != 1 || removed != 1 || len(after) != len(before) {
		t.Fatalf("one entry added: %d chunks written, %d removed (%d before, %d after)", added, removed, len(before), len(after))
	}
	if err := Remove(ctx, st, "example.org", 0); err != nil {
		t.Fatal(err)
	}
	if left := chunkSizes(t, ctx, st); len(left) != 0 {
		t.Fatalf("%d chunks left after the domain's removal", len(left))
	}
}

// A reader that has the policy but not yet every chunk it names serves
// the policy as not Complete (no entry listed, none bypassed) until the
// chunk arrives; a chunk whose content is not what its name says never
// completes it.
func TestIncompleteUntilChunksArrive(t *testing.T) {
	st, ctx := listStore(t)
	d := "example.org"
	p, err := Policy{Mode: ModeStatic, Mailboxes: mailboxes(5_000, "m"), Bypass: mailboxes(3_000, "b")}.Normalize(d)
	if err != nil {
		t.Fatal(err)
	}
	rec, chunks, err := encode(d, p)
	if err != nil {
		t.Fatal(err)
	}
	keys := sortedKeys(chunks)
	if len(keys) < 2 {
		t.Fatalf("%d chunks", len(keys))
	}
	held := keys[0]
	for _, k := range keys[1:] {
		if _, err := st.Lists.Put(ctx, k, chunks[k]); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := st.Put(ctx, d, rec); err != nil {
		t.Fatal(err)
	}
	tab, err := Watch(ctx, st, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	got, ok := tab.Lookup(d)
	if !ok || got.Complete() || got.Count("mailboxes") != 5_000 {
		t.Fatalf("served with a chunk missing: complete %v, count %d", got.Complete(), got.Count("mailboxes"))
	}
	if _, err := PutRevision(ctx, st, d, got, AnyRevision); !errors.Is(err, ErrListIncomplete) {
		t.Fatalf("writing back a policy whose lists were not read: %v", err)
	}
	if _, err := st.Lists.Put(ctx, held, append([]byte("intruder\n"), chunks[held]...)); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Lists.Put(ctx, "example.org.mailboxes.x", []byte("y")); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Put(ctx, "other.example", []byte(`{"mode":"off"}`)); err != nil {
		t.Fatal(err)
	}
	waitfor.Cond(t, 10*time.Second, func() bool { _, ok := tab.Lookup("other.example"); return ok })
	if got, _ := tab.Lookup(d); got.Complete() {
		t.Fatal("a chunk that is not what its name says completed the list")
	}
	if _, err := st.Lists.Put(ctx, held, chunks[held]); err != nil {
		t.Fatal(err)
	}
	waitfor.Cond(t, 10*time.Second, func() bool { got, _ := tab.Lookup(d); return got.Complete() })
	got, _ = tab.Lookup(d)
	for _, m := range append(p.Mailboxes[:50], p.Mailboxes[4950:]...) {
		if !got.Listed(m, "") {
			t.Fatalf("%s not listed once complete", m)
		}
	}
	if !got.Bypassed("b002999", "") || got.Bypassed("m000001", "") {
		t.Fatal("bypass list wrong once complete")
	}
}

// A policy written with an inline list (as before lists were chunked, or
// with `nats kv put`) reads as before; the next write moves a long one to
// chunks, a short one stays inline.
func TestInlineListsMigrateOnWrite(t *testing.T) {
	st, ctx := listStore(t)
	list := mailboxes(3_000, "x")
	raw := `{"mode":"static","mailboxes":["` + strings.Join(list, `","`) + `"]}`
	if _, err := st.Put(ctx, "example.org", []byte(raw)); err != nil {
		t.Fatal(err)
	}
	tab, err := Watch(ctx, st, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	if p, _ := tab.Lookup("example.org"); !p.Complete() || !p.Listed("x002999", "") || p.Listed("x003000", "") {
		t.Fatal("inline list not served as before")
	}
	e, _ := st.Get(ctx, "example.org")
	p, err := Parse("example.org", e.Value())
	if err != nil {
		t.Fatal(err)
	}
	p.Mailboxes = append(p.Mailboxes, "late")
	if _, err := PutRevision(ctx, st, "example.org", p, e.Revision()); err != nil {
		t.Fatal(err)
	}
	e, _ = st.Get(ctx, "example.org")
	if strings.Contains(string(e.Value()), "x000001") || !strings.Contains(string(e.Value()), `"lists"`) {
		t.Fatalf("long list not moved to chunks: %.200s", e.Value())
	}
	waitfor.Cond(t, 10*time.Second, func() bool { p, _ := tab.Lookup("example.org"); return p.Complete() && p.Listed("late", "") })
	if err := Put(ctx, st, "short.example", Policy{Mode: ModeStatic, Mailboxes: []string{"a", "b"}}); err != nil {
		t.Fatal(err)
	}
	if e, _ := st.Get(ctx, "short.example"); !strings.Contains(string(e.Value()), `"mailboxes":["a","b"]`) {
		t.Fatalf("short list not inline: %s", e.Value())
	}
}

// Writers edit one long list at once, each at the revision it read
// (retrying on a conflict), while the chunks no policy names are removed
// behind them. Whatever the interleaving, the stored policy names only
// chunks that exist, its list is what the successful edits made of it,
// and a watching table serves exactly that list.
func TestConcurrentListEdits(t *testing.T) {
	for seed := range uint64(3) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { concurrentListEdits(t, seed) })
	}
}

func concurrentListEdits(t *testing.T, seed uint64) {
	st, ctx := listStore(t)
	d := "example.org"
	base := mailboxes(4_000, "base")
	if err := Put(ctx, st, d, Policy{Mode: ModeStatic, Mailboxes: base}); err != nil {
		t.Fatal(err)
	}
	tab, err := Watch(ctx, st, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	const writers, edits = 4, 12
	// Each writer adds and removes entries of its own, so the model is
	// the base list with each writer's own final set.
	own := make([]map[string]bool, writers)
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		own[w] = map[string]bool{}
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			for i := range edits {
				entry := fmt.Sprintf("w%d-%d", w, i)
				var drop string
				if len(own[w]) > 0 && rng.IntN(3) == 0 {
					for e := range own[w] {
						drop = e
						break
					}
				}
				for tries := 0; ; tries++ {
					if tries == 50 {
						errs <- fmt.Errorf("writer %d: the stored policy stays unreadable: it names a chunk that is gone", w)
						return
					}
					e, err := st.Get(ctx, d)
					if err != nil {
						errs <- err
						return
					}
					p, err := Parse(d, e.Value())
					if err != nil {
						errs <- err
						return
					}
					if p, err = st.Load(ctx, d, p); err != nil {
						// The chunks it read were replaced under it: read again.
						continue
					}
					p.Mailboxes = slices.DeleteFunc(append(p.Mailboxes, entry), func(m string) bool { return m == drop })
					_, err = PutRevision(ctx, st, d, p, e.Revision())
					if errors.Is(err, ErrRevision) {
						continue
					}
					if err != nil {
						errs <- err
						return
					}
					break
				}
				own[w][entry] = true
				delete(own[w], drop)
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	want := slices.Clone(base)
	for _, o := range own {
		for e := range o {
			want = append(want, e)
		}
	}
	slices.Sort(want)
	e, err := st.Get(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	p, err := Parse(d, e.Value())
	if err != nil {
		t.Fatal(err)
	}
	whole, err := st.Load(ctx, d, p)
	if err != nil {
		t.Fatalf("the stored policy names a chunk that is gone: %v", err)
	}
	got := slices.Clone(whole.Mailboxes)
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("stored list has %d entries, the model %d", len(got), len(want))
	}
	waitfor.Cond(t, 10*time.Second, func() bool {
		sp, _ := tab.Lookup(d)
		return sp.Complete() && sp.Count("mailboxes") == len(want)
	})
	sp, _ := tab.Lookup(d)
	for _, m := range want {
		if !sp.Listed(m, "") {
			t.Fatalf("the table does not list %s", m)
		}
	}
	for w := range writers {
		for i := range edits {
			if m := fmt.Sprintf("w%d-%d", w, i); !own[w][m] && sp.Listed(m, "") {
				t.Fatalf("the table lists %s, which was removed", m)
			}
		}
	}
}
