package decisions

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/callout-mail/callout/shared/natstest"
	"github.com/callout-mail/callout/shared/subjects"
	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/waitfor"
)

// emptyLog starts a server with an empty decision log; the context ends
// with the test.
func emptyLog(t testing.TB) (context.Context, jetstream.JetStream, jetstream.Stream, subjects.Names) {
	t.Helper()
	srv := natstest.Start(t)
	nc := srv.Connect(t)
	js := natstest.JetStream(t, nc)
	names := subjects.New("")
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	st, err := js.CreateStream(ctx, StreamConfig(names, 1, DefaultLimits, nil))
	if err != nil {
		t.Fatal(err)
	}
	return ctx, js, st, names
}

// logOf starts a server with a decision log holding recs (cleaned) and
// an index that followed it; it returns the records as stored, in the
// log's order, read back message by message.
func logOf(t *testing.T, recs []Record) (*Index, StreamReader, []Stored) {
	t.Helper()
	ctx, js, st, names := emptyLog(t)
	nc := js.Conn()
	var dropped atomic.Int64
	rec, err := NewRecorder(nc, names, 1<<16, func(string) { dropped.Add(1) }, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	go rec.Run(ctx)
	for i := range recs {
		rec.Record(&recs[i])
		recs[i].Clean()
	}
	var stored []Stored
	waitfor.Cond(t, 30*time.Second, func() bool {
		stored = stored[:0]
		info, err := st.Info(ctx)
		if err != nil || info.State.Msgs == 0 {
			return false
		}
		var seqs []uint64
		for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
			seqs = append(seqs, seq)
		}
		_ = StreamReader{NC: nc, Stream: names.DecisionStream()}.Messages(ctx, seqs, func(seq uint64, _ string, data []byte) {
			_ = DecodeBatch(data, func(idx int, r *Record) bool {
				stored = append(stored, Stored{ID: ID(seq, idx), Record: *r})
				return true
			})
		})
		return len(stored) == len(recs)
	})
	if dropped.Load() != 0 {
		t.Fatalf("%d records dropped", dropped.Load())
	}
	x := followed(t, ctx, js, names)
	if x.Last() != stored[len(stored)-1].ID || x.Len() != len(recs) {
		t.Fatalf("index at %d with %d, want %d with %d", x.Last(), x.Len(), stored[len(stored)-1].ID, len(recs))
	}
	// Every record was stored as it was recorded, in batches.
	count := map[string]int{}
	key := func(r *Record) string {
		return fmt.Sprintf("%v|%s|%s|%s|%s", r.At.UnixNano(), r.Recipient, r.Sender, r.Action, r.DestText)
	}
	for i := range recs {
		count[key(&recs[i])]++
	}
	for i := range stored {
		count[key(&stored[i].Record)]--
	}
	for k, n := range count {
		if n != 0 {
			t.Fatalf("record %s stored %d times too few", k, n)
		}
	}
	if msgs := SeqOf(stored[len(stored)-1].ID); msgs >= uint64(len(recs)) {
		t.Fatalf("%d records in %d messages: not batched", len(recs), msgs)
	}
	return x, StreamReader{NC: nc, Stream: names.DecisionStream()}, stored
}

// followed is an index following the log until the test ends, once it
// has caught up.
func followed(t *testing.T, ctx context.Context, js jetstream.JetStream, names subjects.Names) *Index {
	t.Helper()
	x := &Index{}
	caught := make(chan struct{})
	go func() { _ = Follow(ctx, js, names.DecisionStream(), x, func() { close(caught) }) }()
	select {
	case <-caught:
	case <-time.After(30 * time.Second):
		t.Fatal("index did not catch up")
	}
	return x
}

var (
	testDomains = []string{"example.org", "example.net", "Big.Example", "*", "a b.example"}
	testLocals  = []string{"alice", "bob", "Carol", "*", ">", "dave.x"}
	testActions = []verdict.Action{verdict.Accept, verdict.Reject, verdict.Defer}
	testReasons = []verdict.Reason{verdict.ReasonUserUnknown, verdict.ReasonDeferred, verdict.ReasonAccepted}
	testClients = []string{"192.0.2.1", "192.0.2.200", "198.51.100.7", "2001:db8::1", ""}
	testSenders = []string{"", "s@example.com", "S@Example.com", "x@other.example"}
)

func randomRecords(r *rand.Rand, n int, start time.Time) []Record {
	recs := make([]Record, n)
	at := start
	for i := range recs {
		at = at.Add(time.Duration(r.IntN(600)) * time.Second)
		recs[i] = Record{
			At: at.UTC().Truncate(time.Microsecond), Instance: "host/abc", Via: ViaPolicy,
			Client: testClients[r.IntN(len(testClients))], Helo: "mx\r\n.example",
			Sender:    testSenders[r.IntN(len(testSenders))],
			Recipient: testLocals[r.IntN(len(testLocals))] + "@" + testDomains[r.IntN(len(testDomains))],
			Purpose:   verdict.Recipient, Action: testActions[r.IntN(3)], Code: 250,
			Reason: testReasons[r.IntN(len(testReasons))], Source: verdict.SourceProbe, DestText: "no\r\nsuch\x00user",
		}
		if r.IntN(10) == 0 {
			recs[i].Purpose = verdict.Sender
		}
	}
	return recs
}

func randomQuery(r *rand.Rand, start time.Time) Query {
	var q Query
	pick := func(p int) bool { return r.IntN(100) < p }
	if pick(30) {
		q.Recipient = strings.ToUpper(testLocals[r.IntN(len(testLocals))]) + "@" + testDomains[r.IntN(len(testDomains))]
	} else if pick(30) {
		q.Domain = testDomains[r.IntN(len(testDomains))]
	}
	if pick(40) {
		q.Action = testActions[r.IntN(3)]
	}
	if pick(20) {
		q.Reason = testReasons[r.IntN(len(testReasons))]
	}
	if pick(15) {
		q.Client = []string{"192.0.2.0/24", "198.51.100.7", "2001:db8::/32"}[r.IntN(3)]
	}
	if pick(15) {
		q.Sender = []string{"<>", "s@example.com", "x@other.example"}[r.IntN(3)]
	}
	if pick(30) {
		q.Since = start.Add(time.Duration(r.IntN(200)) * time.Hour)
	}
	if pick(30) {
		q.Until = start.Add(time.Duration(200+r.IntN(200)) * time.Hour)
	}
	if pick(20) {
		q.Domains = []string{"example.org", "big.example"}
	}
	q.Limit = []int{1, 7, 50, 400}[r.IntN(4)]
	return q
}

// Every page of random searches, followed to the last, is what a model
// (every record checked with Match, newest first) finds.
func TestSearchAgainstModel(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	r := rand.New(rand.NewPCG(seed, 7))
	start := time.Date(2026, 11, 28, 0, 0, 0, 0, time.UTC)
	recs := randomRecords(r, segSize+500, start)
	x, rd, stored := logOf(t, recs)
	byID := map[uint64]Record{}
	for _, st := range stored {
		byID[st.ID] = st.Record
	}
	ctx := context.Background()
	for i := 0; i < 40; i++ {
		q := randomQuery(r, start)
		if err := q.Check(); err != nil {
			continue // a recipient outside the domain, say
		}
		if q.Limit == 1 && q.Recipient == "" {
			q.Limit = 50 // one record a page: followed over a few records only
		}
		var want []uint64
		for j := len(stored) - 1; j >= 0; j-- {
			if q.Match(&stored[j].Record) {
				want = append(want, stored[j].ID)
			}
		}
		var got []uint64
		page := q
		for pages := 0; ; pages++ {
			res, err := Search(ctx, x, rd, page, len(recs))
			if err != nil {
				t.Fatalf("seed %d query %+v: %v", seed, q, err)
			}
			if len(res.Records) > q.Limit || pages > len(recs) {
				t.Fatalf("seed %d: page of %d, limit %d", seed, len(res.Records), q.Limit)
			}
			for _, h := range res.Records {
				got = append(got, h.ID)
				if rec := byID[h.ID]; h.Record.Recipient != rec.Recipient || !h.At.Equal(rec.At) || h.DestText != rec.DestText {
					t.Fatalf("seed %d: record %d read as %+v, stored %+v", seed, h.ID, h.Record, rec)
				}
			}
			if res.Next == 0 {
				break
			}
			page.Before = res.Next
		}
		if !slices.Equal(got, want) {
			t.Fatalf("seed %d query %+v:\n got %d records %v\nwant %d records %v", seed, q, len(got), head(got), len(want), head(want))
		}
	}
}

func head(s []uint64) []uint64 { return s[:min(len(s), 10)] }

// A record never holds a raw CR, LF or NUL, nor an over-long field.
func TestRecordClean(t *testing.T) {
	r := Record{Helo: "a\r\nb", DestText: "x\x00y" + strings.Repeat("é", 400), Recipient: strings.Repeat("a", 400) + "@x"}
	r.Clean()
	for _, f := range []string{r.Helo, r.DestText, r.Recipient} {
		if strings.ContainsAny(f, "\r\n\x00") || len(f) > maxText {
			t.Fatalf("not clean: %q", f)
		}
	}
	b, err := Encode(&r)
	if err != nil {
		t.Fatal(err)
	}
	var back Record
	if err := Decode(b, &back); err != nil || back.Helo != r.Helo {
		t.Fatalf("round trip %+v %v", back, err)
	}
	for _, garbage := range [][]byte{nil, []byte("\xc1"), []byte("\x91\x63"), []byte(`{"v":1}`), make([]byte, 20<<10)} {
		if err := Decode(garbage, &back); !errors.Is(err, ErrRecord) {
			t.Errorf("garbage %q: %v", garbage[:min(len(garbage), 8)], err)
		}
	}
}

// Malformed filters name their field; a filter's text never widens the
// search.
func TestQueryCheck(t *testing.T) {
	for _, tt := range []struct {
		q     Query
		field string
	}{
		{Query{Recipient: "nobody"}, "recipient"},
		{Query{Domain: "a@b"}, "domain"},
		{Query{Recipient: "a@x.org", Domain: "y.org"}, "domain"},
		{Query{Client: "300.1.1.1"}, "client"},
		{Query{Client: "10.0.0.0/99"}, "client"},
		{Query{Action: "drop"}, "action"},
		{Query{Reason: "whatever"}, "reason"},
		{Query{Limit: MaxLimit + 1}, "limit"},
		{Query{Limit: -1}, "limit"},
		{Query{Sender: "a\r\nb"}, "sender"},
		{Query{Recipient: strings.Repeat("a", 400) + "@x"}, "recipient"},
		{Query{Since: time.Now(), Until: time.Now().Add(-time.Hour)}, "until"},
		{Query{Purpose: "both"}, "purpose"},
	} {
		err := tt.q.Check()
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != tt.field || !errors.Is(err, ErrBadFilter) {
			t.Errorf("%+v: %v, want an error on %s", tt.q, err, tt.field)
		}
	}
	q := Query{Recipient: "*@example.org"}
	if err := q.Check(); err != nil || q.Match(&Record{Recipient: "alice@example.org"}) || !q.Match(&Record{Recipient: "*@example.org"}) {
		t.Fatalf("a * recipient is text: %v", err)
	}
}

// A filter the index cannot answer reads at most its bound, or is refused
// saying how much it would read.
func TestSearchBounded(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	start := time.Now().Add(-24 * time.Hour)
	recs := randomRecords(r, 500, start)
	x, rd, _ := logOf(t, recs)
	q := Query{Sender: "s@example.com"}
	if err := q.Check(); err != nil {
		t.Fatal(err)
	}
	_, err := Search(context.Background(), x, rd, q, 100)
	var tb *TooBroadError
	if !errors.As(err, &tb) || tb.Would != 500 || tb.Bound != 100 || !errors.Is(err, ErrTooBroad) {
		t.Fatalf("got %v", err)
	}
	// Narrowed by domain and action, it runs.
	q = Query{Sender: "s@example.com", Domain: "example.org", Action: verdict.Reject}
	_ = q.Check()
	res, err := Search(context.Background(), x, rd, q, 100)
	if err != nil || res.Candidates > 100 {
		t.Fatalf("narrowed: %+v %v", res, err)
	}
	// An erased domain's entries are no candidates.
	x.Erase("example.org")
	if n := x.Count(&Query{Domain: "example.org"}, 0); n != 0 {
		t.Fatalf("%d candidates after erase", n)
	}
	x.Forget(x.Last() + 1)
	if x.Len() != 0 || x.Count(&Query{}, 0) != 0 {
		t.Fatalf("forget left %d", x.Len())
	}
}

func ExampleToken() {
	fmt.Println(Token("example.org"), Token("*"), Token("a b.example"), Token(""))
	// Output: example.org _ _ _
}

// The index gives each record its message and place back, across gaps
// in the log's sequences, batches, segment ends and a batch joined in
// its middle.
func TestIndexPositions(t *testing.T) {
	var want []uint64
	x := &Index{}
	add := func(seq uint64, idx int) {
		x.Add(seq, idx, &Record{Recipient: "a@b.example", Action: verdict.Accept, At: time.Unix(int64(seq), 0)})
		want = append(want, ID(seq, idx))
	}
	add(1, 0)
	add(1, 1)
	add(2, 0)
	add(5, 0) // a gap
	add(5, 1)
	add(9, 2) // joined in the middle of a batch
	add(9, 3)
	for seq := uint64(10); len(want) < 2*segSize+10; seq++ {
		for idx := 0; idx < int(seq%3)+1; idx++ {
			add(seq, idx)
		}
	}
	x.Add(3, 0, &Record{}) // older than the last: ignored
	var got []uint64
	x.each(&Query{}, 0, func(id uint64) bool { got = append(got, id); return true })
	slices.Reverse(got)
	if !slices.Equal(got, want) {
		for i := range want {
			if i >= len(got) || got[i] != want[i] {
				t.Fatalf("entry %d: got %d/%d, want %d/%d", i, SeqOf(got[i]), IdxOf(got[i]), SeqOf(want[i]), IdxOf(want[i]))
			}
		}
		t.Fatalf("got %d entries, want %d", len(got), len(want))
	}
	x.Forget(SeqOf(want[segSize+5]))
	if x.Len() != len(want)-segSize {
		t.Fatalf("after forget: %d entries, want %d", x.Len(), len(want)-segSize)
	}
}

// The hand encoder writes what the msgpack encoder writes, field for
// field, so that either side of the format reads the other.
func TestAppendEncode(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	recs := randomRecords(r, 200, time.Now().Add(-time.Hour))
	recs = append(recs, Record{}, Record{At: time.Unix(1<<35, 5), CheckedAt: time.Unix(0, 1), TookUS: -5, Code: 70000, DestCode: 1 << 40,
		Text: strings.Repeat("x", 300), DestText: strings.Repeat("y", 70000), Would: verdict.Reject, DestEnhanced: "5.1.1"})
	for i := range recs {
		recs[i].V = Version
		want, err := msgpack.Marshal(&recs[i])
		if err != nil {
			t.Fatal(err)
		}
		if got := AppendEncode(nil, &recs[i]); !bytes.Equal(got, want) {
			t.Fatalf("record %d:\n got %x\nwant %x", i, got, want)
		}
	}
}

// The buffer bounds the records waiting for the log: past it they are
// dropped and counted, never blocking; a full batch goes at once, the
// rest within BatchEvery; the caller's record is left as it was.
func TestRecorderBuffer(t *testing.T) {
	ctx, js, st, names := emptyLog(t)
	nc := js.Conn()
	var mu sync.Mutex
	dropped := map[string]int{}
	const buffer = MaxBatch + 10
	rec, err := NewRecorder(nc, names, buffer, func(why string) { mu.Lock(); dropped[why]++; mu.Unlock() }, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	r := Record{At: time.Now(), Recipient: "a@example.org", Action: verdict.Reject, Code: 550, DestText: "no\r\nsuch user"}
	for range buffer + 5 {
		rec.Record(&r) // no Run yet: nothing is published
	}
	if r.DestText != "no\r\nsuch user" {
		t.Fatalf("the caller's record was changed: %q", r.DestText)
	}
	mu.Lock()
	if dropped[DropBuffer] != 5 || len(dropped) != 1 {
		t.Fatalf("dropped %v, want 5 for the buffer", dropped)
	}
	mu.Unlock()
	go rec.Run(ctx)
	count := func() uint64 {
		info, err := st.Info(ctx)
		if err != nil {
			return 0
		}
		return info.State.Msgs
	}
	// The full batch (MaxBatch records) goes at once, the rest on the
	// tick; once the first went, its records no longer count against the
	// buffer.
	waitfor.Cond(t, 5*time.Second, func() bool { return count() >= 1 })
	rec.Record(&r)
	stored := func() int {
		n := 0
		var seqs []uint64
		for seq := uint64(1); seq <= count(); seq++ {
			seqs = append(seqs, seq)
		}
		_ = StreamReader{NC: nc, Stream: names.DecisionStream()}.Messages(ctx, seqs, func(_ uint64, _ string, data []byte) {
			_ = DecodeBatch(data, func(_ int, got *Record) bool {
				if got.DestText != "no  such user" {
					t.Errorf("stored text %q, not cleaned", got.DestText)
				}
				n++
				return true
			})
		})
		return n
	}
	waitfor.Cond(t, 5*time.Second, func() bool { return stored() == buffer+1 })
	// Published, they no longer count against the buffer.
	for range buffer {
		rec.Record(&r)
	}
	mu.Lock()
	defer mu.Unlock()
	if dropped[DropBuffer] != 5 {
		t.Fatalf("dropped %v after the log took the first ones", dropped)
	}
}

// decodeBatchReflect is DecodeBatch with the reflecting decoder alone,
// what the hand decoder must match.
func decodeBatchReflect(b []byte) (recs []Record, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: %v", ErrRecord, p)
		}
	}()
	if len(b) == 0 || len(b) > 2*MaxBatchBytes {
		return nil, ErrRecord
	}
	br := bytes.NewReader(b)
	dec := msgpack.NewDecoder(br)
	for idx := 0; br.Len() > 0; idx++ {
		var r Record
		if err := dec.Decode(&r); err != nil {
			return recs, ErrRecord
		}
		if r.V < 1 || r.V > Version || idx > MaxBatch {
			return recs, ErrRecord
		}
		recs = append(recs, r)
	}
	return recs, nil
}

// The hand decoder of batches gives what the reflecting decoder gives,
// for the records AppendEncode writes, an older shorter form mixed in,
// and those bytes damaged at random.
func TestDecodeBatchAgainstReflection(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	recs := randomRecords(r, 300, time.Now().Add(-time.Hour))
	recs = append(recs, Record{At: time.Unix(1<<35, 5), CheckedAt: time.Unix(0, 1), TookUS: -5, Code: 70000, DestCode: 1 << 40,
		Text: strings.Repeat("x", 300), DestText: strings.Repeat("y", 700), Would: verdict.Reject, DestEnhanced: "5.1.1"})
	// A record of 23 fields, as written before DestEnhanced was appended.
	older := AppendEncode(nil, &recs[0])
	older = older[:len(older)-1] // its DestEnhanced, "": one byte
	older[2] = recordFields - 1  // array 16: 0xdc, two bytes of length
	var batches [][]byte
	for i := 0; i < len(recs); {
		n := 1 + r.IntN(40)
		var b []byte
		for j := i; j < min(i+n, len(recs)); j++ {
			b = AppendEncode(b, &recs[j])
			if r.IntN(10) == 0 {
				b = append(b, older...)
			}
		}
		batches = append(batches, b)
		i += n
	}
	check := func(b []byte) {
		t.Helper()
		want, wantErr := decodeBatchReflect(b)
		var got []Record
		err := DecodeBatch(b, func(_ int, r *Record) bool { got = append(got, *r); return true })
		if (err != nil) != (wantErr != nil) || (err != nil && !errors.Is(err, ErrRecord)) {
			t.Fatalf("batch %x: error %v, want %v", b, err, wantErr)
		}
		if len(got) != len(want) {
			t.Fatalf("batch %x: %d records, want %d", b, len(got), len(want))
		}
		for i := range got {
			if !reflect.DeepEqual(got[i], want[i]) {
				t.Fatalf("record %d:\n got %+v\nwant %+v", i, got[i], want[i])
			}
		}
		// The index's reading of the batch: the same records' entries.
		var entries []Entry
		err = IndexBatch(b, func(idx int, e Entry) {
			if idx != len(entries) {
				t.Fatalf("batch %x: entry %d came as %d", b, len(entries), idx)
			}
			entries = append(entries, e)
		})
		if (err != nil) != (wantErr != nil) || (err != nil && !errors.Is(err, ErrRecord)) {
			t.Fatalf("batch %x: index error %v, want %v", b, err, wantErr)
		}
		if len(entries) != len(want) {
			t.Fatalf("batch %x: %d entries, want %d", b, len(entries), len(want))
		}
		for i := range entries {
			if e := EntryOf(&want[i]); entries[i] != e {
				t.Fatalf("entry %d: %+v, want %+v", i, entries[i], e)
			}
		}
	}
	for _, b := range batches {
		check(b)
		for range 20 {
			d := slices.Clone(b)
			switch r.IntN(3) {
			case 0:
				d[r.IntN(len(d))] = byte(r.IntN(256))
			case 1:
				d = d[:r.IntN(len(d))]
			default:
				d = append(d, byte(r.IntN(256)))
			}
			if len(d) > 0 {
				check(d)
			}
		}
	}
	// fn ends the batch when it says so.
	n := 0
	if err := DecodeBatch(batches[0], func(int, *Record) bool { n++; return false }); err != nil || n != 1 {
		t.Fatalf("stopped batch: %d records, %v", n, err)
	}
}

// The index's hash is FNV-1a of the lower-cased text, and a record's
// domain hash is that of its lower-cased domain without a final dot.
func TestIndexHash(t *testing.T) {
	for _, tc := range []struct{ rcpt, domain string }{
		{"Bob@Example.ORG", "example.org"}, {"bob@example.org.", "example.org"}, {"x@", ""}, {"no-at", ""},
		{"a@b@C.example", "c.example"}, {"x@\xff", "\ufffd"}, {"x@ÄÖ.example", "äö.example"}, {"", ""},
	} {
		lower := []byte(tc.rcpt) // ASCII only, other bytes kept
		for i, c := range lower {
			if c >= 'A' && c <= 'Z' {
				lower[i] = c + 'a' - 'A'
			}
		}
		h := fnv.New32a()
		_, _ = h.Write(lower)
		if got := hash(tc.rcpt); got != h.Sum32() || hash([]byte(tc.rcpt)) != got {
			t.Errorf("hash(%q) = %x, want %x", tc.rcpt, got, h.Sum32())
		}
		r := Record{Recipient: tc.rcpt}
		if got, want := domainHash([]byte(tc.rcpt)), hash(r.Domain()); got != want || want != hash(tc.domain) {
			t.Errorf("domain of %q: %x, want %x (%q)", tc.rcpt, got, want, tc.domain)
		}
	}
}

// Indexing a batch written by AppendEncode allocates nothing per record
// (one reader per batch): the index reads every record of the log as it
// comes.
func TestIndexBatchAllocs(t *testing.T) {
	recs := randomRecords(rand.New(rand.NewPCG(7, 8)), 50, time.Now())
	var b []byte
	for i := range recs {
		b = AppendEncode(b, &recs[i])
	}
	n := 0
	fn := func(int, Entry) { n++ }
	if a := testing.AllocsPerRun(20, func() { _ = IndexBatch(b, fn) }); a > 1 {
		t.Errorf("%v allocations per batch of %d records", a, len(recs))
	}
	if n != 21*len(recs) {
		t.Errorf("%d entries, want %d", n, 21*len(recs))
	}
}

// BenchmarkIndexBatch is what the index spends on a full batch of the
// log: the cachekeeper reads every record as it is written.
func BenchmarkIndexBatch(b *testing.B) {
	recs := randomRecords(rand.New(rand.NewPCG(7, 8)), MaxBatch, time.Now())
	var buf []byte
	for i := range recs {
		buf = AppendEncode(buf, &recs[i])
	}
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	for range b.N {
		_ = IndexBatch(buf, func(int, Entry) {})
	}
}

// BenchmarkRecord is what recording costs the answering goroutine: a
// Postfix request's record (client, HELO, sender, the destination's
// reply) cleaned, encoded and appended to its batch. The batches are
// published by Run, as in the ingest.
func BenchmarkRecord(b *testing.B) {
	ctx, js, _, names := emptyLog(b)
	nc := js.Conn()
	rec, err := NewRecorder(nc, names, 1<<20, func(string) {}, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	go rec.Run(ctx)
	r := Record{At: time.Now(), Instance: "mx1.example.net/NCSX9Q2", Via: "policy", Client: "192.0.2.10", Helo: "mail.sender.example",
		Sender: "someone@sender.example", Recipient: "alice@example.org", Purpose: verdict.Recipient, Action: verdict.Accept,
		Status: verdict.Valid, Reason: verdict.ReasonAccepted, Source: SourceNear, Host: "mx.example.org:25", DestCode: 250,
		DestEnhanced: "2.1.5", DestText: "Ok", TookUS: 35, CheckedAt: time.Now()}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		rec.Record(&r)
	}
}

// A batch is stored compressed when that makes it smaller, and read back
// as it was; bad compressed data, a batch that would grow past the bound
// and an unknown compression are ErrRecord, never a panic or a large
// allocation.
func TestBatchData(t *testing.T) {
	recs := randomRecords(rand.New(rand.NewPCG(9, 10)), 100, time.Now())
	var batch []byte
	for i := range recs {
		batch = AppendEncode(batch, &recs[i])
	}
	m := BatchMsg("s", batch, len(recs))
	if m.Header.Get(CompressionHeader) != "s2" || len(m.Data)*2 > len(batch) || m.Header.Get(BatchHeader) != "100" {
		t.Fatalf("batch of %d bytes stored as %d, headers %v", len(batch), len(m.Data), m.Header)
	}
	got, err := BatchData(nil, m.Header, m.Data)
	if err != nil || !bytes.Equal(got, batch) {
		t.Fatalf("read back: %v", err)
	}
	// Incompressible: stored as it is.
	noise := make([]byte, 200)
	for i := range noise {
		noise[i] = byte(rand.IntN(256))
	}
	if m := BatchMsg("s", noise, 1); m.Header.Get(CompressionHeader) != "" || !bytes.Equal(m.Data, noise) {
		t.Fatalf("incompressible batch changed: %v", m.Header)
	}
	// As an ingest without compression wrote it.
	if got, err := BatchData(nil, nats.Header{}, batch); err != nil || !bytes.Equal(got, batch) {
		t.Fatalf("plain batch: %v", err)
	}
	s2h := nats.Header{CompressionHeader: []string{"s2"}}
	bomb := BatchMsg("s", make([]byte, 3*MaxBatchBytes), 1)
	for name, tc := range map[string]struct {
		h    nats.Header
		data []byte
	}{
		"garbage":        {s2h, []byte("\xff\xff\xff\xff\x0fnot s2")},
		"cut short":      {s2h, m.Data[:len(m.Data)/2]},
		"empty":          {s2h, nil},
		"past the bound": {bomb.Header, bomb.Data},
		"unknown":        {nats.Header{CompressionHeader: []string{"zstd"}}, batch},
	} {
		if _, err := BatchData(nil, tc.h, tc.data); !errors.Is(err, ErrRecord) {
			t.Errorf("%s: %v, want ErrRecord", name, err)
		}
	}
}

// A log holding batches compressed and not (from an ingest of before),
// and unreadable ones, is read and indexed whole but for the unreadable.
func TestLogOfBothForms(t *testing.T) {
	ctx, js, _, names := emptyLog(t)
	recs := randomRecords(rand.New(rand.NewPCG(11, 12)), 40, time.Now())
	subject := names.Decision(string(verdict.Accept))
	var want int
	for i, form := range []string{"s2", "plain", "garbage", "s2", "unknown", "plain"} {
		var batch []byte
		for j := range 5 {
			batch = AppendEncode(batch, &recs[i*5+j])
		}
		m := BatchMsg(subject, batch, 5)
		if m.Header.Get(CompressionHeader) != "s2" {
			t.Fatalf("batch %d stored uncompressed: the forms below start from a compressed one", i)
		}
		switch form {
		case "plain":
			m = nats.NewMsg(subject)
			m.Data = batch
		case "garbage":
			m.Data = m.Data[:len(m.Data)/3]
		case "unknown":
			m.Header.Set(CompressionHeader, "lz4")
		}
		if form == "s2" || form == "plain" {
			want += 5
		}
		if _, err := js.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	n := 0
	err := StreamReader{NC: js.Conn(), Stream: names.DecisionStream()}.Messages(ctx, []uint64{1, 2, 3, 4, 5, 6}, func(_ uint64, _ string, data []byte) {
		if err := DecodeBatch(data, func(int, *Record) bool { n++; return true }); err != nil {
			t.Errorf("batch: %v", err)
		}
	})
	if err != nil || n != want {
		t.Fatalf("read %d records (%v), want %d", n, err, want)
	}
	x := followed(t, ctx, js, names)
	waitfor.Cond(t, 10*time.Second, func() bool { return x.Len() == want })
}
