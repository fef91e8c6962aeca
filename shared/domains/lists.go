package domains

// Long lists. A policy's mailbox or bypass list longer than InlineBytes is
// not stored in the policy's own value (one NATS message, 64 KiB at most
// here, and every change would rewrite it whole) but in chunks in a
// bucket of its own: the entries are spread over a power of two of chunks
// by a hash of the entry, and each chunk is stored under a key named by
// a hash of its content. The policy's value names its chunks. So:
//
//   - no message carries the whole list, and adding or removing one entry
//     writes one chunk of ~24 KiB, not the list;
//   - a chunk never changes once written: a reader that has every chunk
//     the policy names has exactly the list that was written, and one
//     that lacks one knows it (the policy is not Complete) rather than
//     serving a part of the list;
//   - chunks are written before the policy that names them, and the
//     chunks no policy names any more are removed after it, so a policy
//     always names chunks that exist.

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/callout-mail/callout/shared/streams"
)

// ListRef is how a stored policy names a list kept in chunks.
type ListRef struct {
	Count  int      `json:"count"`  // entries, in all chunks together
	Chunks []string `json:"chunks"` // content hashes: keys <domain>.<field>.<hash> of the lists bucket
}

const (
	// InlineBytes is the largest list (entries and their separators)
	// kept in the policy's own value: a few hundred addresses, readable
	// with `nats kv get`.
	InlineBytes = 8 << 10
	// chunkTarget is the mean size a list is cut to; chunkMax the most
	// any chunk may hold (well inside the 64 KiB max_payload of the
	// shipped server config).
	chunkTarget = 24 << 10
	chunkMax    = 48 << 10
	// MaxListEntries is the most entries one list holds.
	MaxListEntries = 1_000_000
	// maxRecord bounds a stored policy with its chunk names.
	maxRecord = 48 << 10
	// purgeMarkerTTL is how long the marker of a removed chunk stays: long
	// enough for every watching instance to see it.
	purgeMarkerTTL = time.Hour
)

// listFields are the policy's lists, by JSON name.
var listFields = []string{"mailboxes", "bypass"}

// ErrListIncomplete is returned when a chunk a policy names cannot be read.
var ErrListIncomplete = errors.New("the policy's list is not complete")

// hashLen is the length of a chunk's name (hex of 12 bytes of SHA-256).
const hashLen = 24

// chunkKey is the key of a chunk of a domain's list field.
func chunkKey(domain, field, hash string) string {
	return domain + "." + field + "." + hash
}

// parseChunkKey splits a chunk key (domain, field, hash).
func parseChunkKey(key string) (domain, field, hash string, ok bool) {
	i := strings.LastIndexByte(key, '.')
	if i < 0 || len(key)-i-1 != hashLen {
		return "", "", "", false
	}
	j := strings.LastIndexByte(key[:i], '.')
	if j <= 0 || !slices.Contains(listFields, key[j+1:i]) {
		return "", "", "", false
	}
	return key[:j], key[j+1 : i], key[i+1:], true
}

// listBytes is the size of a list inline: entries, quotes and commas.
func listBytes(list []string) int {
	n := 0
	for _, e := range list {
		n += len(e) + 3
	}
	return n
}

// encodeChunk is a chunk's stored form: its entries sorted, one per line
// (a normalized local part holds no CR, LF or NUL), and its name.
func encodeChunk(entries []string) ([]byte, string) {
	slices.Sort(entries)
	b := []byte(strings.Join(entries, "\n"))
	return b, contentHash(b)
}

func contentHash(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:hashLen/2])
}

// decodeChunk reads a stored chunk, checking it is the one named hash.
func decodeChunk(b []byte, hash string) ([]string, error) {
	if contentHash(b) != hash {
		return nil, fmt.Errorf("%w: chunk %s does not hold what its name says", ErrListIncomplete, hash)
	}
	if len(b) == 0 {
		return nil, nil
	}
	return strings.Split(string(b), "\n"), nil
}

// split cuts a normalized list into chunks: entries go to chunk
// hash(entry) mod n, n the least power of two that keeps chunks near
// chunkTarget and every chunk under chunkMax. An entry lands in the same
// chunk whatever else the list holds, so a change of one entry changes
// one chunk.
func split(list []string) ([][]byte, []string) {
	n := 1
	for n*chunkTarget < listBytes(list) {
		n *= 2
	}
	for {
		parts := make([][]string, n)
		size := make([]int, n)
		over := false
		for _, e := range list {
			h := fnv.New64a()
			h.Write([]byte(strings.ToLower(e)))
			i := int(h.Sum64() & uint64(n-1))
			parts[i] = append(parts[i], e)
			size[i] += len(e) + 1
			over = over || size[i] > chunkMax
		}
		if over && n < len(list) {
			n *= 2
			continue
		}
		var data [][]byte
		var names []string
		for _, p := range parts {
			if len(p) == 0 {
				continue
			}
			b, name := encodeChunk(p)
			data, names = append(data, b), append(names, name)
		}
		return data, names
	}
}

// Store is the policy bucket (the embedded KeyValue: a domain's policy
// under its name) with the bucket of long lists (nil for a reader that
// needs no list: such a reader sees a policy's lists as not Complete).
type Store struct {
	jetstream.KeyValue
	Lists jetstream.KeyValue
}

// record is a policy as stored: the policy, and the lists kept in chunks.
type record struct {
	Policy
	Lists map[string]ListRef `json:"lists,omitempty"`
}

// encode is the stored form of p (normalized): each list longer than
// InlineBytes goes to chunks, which it returns keyed by their keys.
func encode(domain string, p Policy) ([]byte, map[string][]byte, error) {
	rec := record{Policy: p}
	chunks := map[string][]byte{}
	for _, field := range listFields {
		l := p.list(field)
		if len(*l) > MaxListEntries {
			return nil, nil, fieldErr(field, "%d entries, at most %d", len(*l), MaxListEntries)
		}
		if listBytes(*l) <= InlineBytes {
			continue
		}
		data, names := split(slices.Clone(*l))
		for i, name := range names {
			chunks[chunkKey(domain, field, name)] = data[i]
		}
		if rec.Lists == nil {
			rec.Lists = map[string]ListRef{}
		}
		rec.Lists[field] = ListRef{Count: len(*l), Chunks: names}
		*rec.Policy.list(field) = nil
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return nil, nil, err
	}
	if len(b) > maxRecord {
		return nil, nil, fieldErr("mailboxes", "the lists are too large to store (%d bytes of chunk names)", len(b))
	}
	return b, chunks, nil
}

// writeChunks stores the chunks that the policy at rev (the one the
// writer read) does not name, and returns the lists bucket's last
// sequence before the policy is written: the mark for removeChunks.
//
// A chunk the read policy names is kept by whoever removes chunks after
// writing that policy; any other is (re)written here, after that policy,
// so that a removal begun before it cannot take it (see removeChunks).
func (st *Store) writeChunks(ctx context.Context, domain string, chunks map[string][]byte, rev uint64) (uint64, error) {
	if st.Lists == nil {
		if len(chunks) > 0 {
			return 0, errors.New("no lists bucket to store a long list in")
		}
		return 0, nil
	}
	// Without a revision to hold the write to (AnyRevision), every chunk
	// is written: another writer may be removing the stored policy's.
	named := map[string]bool{}
	if rev != 0 && rev != AnyRevision {
		if e, err := st.Get(ctx, domain); err == nil && e.Revision() == rev {
			for k := range storedChunks(domain, e.Value()) {
				named[k] = true
			}
		}
	}
	for _, k := range sortedKeys(chunks) {
		if named[k] {
			continue
		}
		if _, err := st.Lists.Put(ctx, k, chunks[k]); err != nil {
			return 0, fmt.Errorf("store list chunk %s: %w", k, err)
		}
	}
	s, err := st.Lists.Status(ctx)
	if err != nil {
		return 0, fmt.Errorf("lists bucket: %w", err)
	}
	bs, ok := s.(*jetstream.KeyValueBucketStatus)
	if !ok {
		return 0, errors.New("lists bucket: no stream state")
	}
	return bs.StreamInfo().State.LastSeq, nil
}

// removeChunks removes the chunks of domain that keep (the policy just
// written) does not name and that were written no later than mark. A
// chunk written after the mark may belong to a policy being written now
// by someone who read this one; one rewritten since it was listed is
// kept by the revision check.
func (st *Store) removeChunks(ctx context.Context, domain string, keep map[string]bool, mark uint64) error {
	if st.Lists == nil {
		return nil
	}
	var filters []string
	for _, f := range listFields {
		filters = append(filters, domain+"."+f+".*")
	}
	w, err := st.Lists.WatchFiltered(ctx, filters, jetstream.IgnoreDeletes(), jetstream.MetaOnly())
	if err != nil {
		return err
	}
	defer func() { _ = w.Stop() }()
	var gone []jetstream.KeyValueEntry
	for e := range w.Updates() {
		if e == nil {
			break
		}
		if !keep[e.Key()] && e.Revision() <= mark {
			gone = append(gone, e)
		}
	}
	var errs []error
	for _, e := range gone {
		err := st.Lists.Purge(ctx, e.Key(), jetstream.LastRevision(e.Revision()), jetstream.PurgeTTL(purgeMarkerTTL))
		if err != nil && !errors.Is(err, jetstream.ErrKeyRevisionMismatch) && !streams.WrongLastSequence(err) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// storedChunks are the chunk keys a stored policy value names.
func storedChunks(domain string, value []byte) map[string]bool {
	var rec struct {
		Lists map[string]ListRef `json:"lists"`
	}
	out := map[string]bool{}
	if json.Unmarshal(value, &rec) != nil {
		return out
	}
	for field, ref := range rec.Lists {
		for _, h := range ref.Chunks {
			out[chunkKey(domain, field, h)] = true
		}
	}
	return out
}

// Load returns p (read from the bucket) with its chunked lists read in,
// whole and in order; ErrListIncomplete when a chunk cannot be read.
func (st *Store) Load(ctx context.Context, domain string, p Policy) (Policy, error) {
	if len(p.refs) == 0 {
		return p, nil
	}
	if st.Lists == nil {
		return p, fmt.Errorf("%w: no lists bucket", ErrListIncomplete)
	}
	for _, field := range listFields {
		ref, ok := p.refs[field]
		if !ok {
			continue
		}
		list := make([]string, 0, ref.Count)
		for _, h := range ref.Chunks {
			e, err := st.Lists.Get(ctx, chunkKey(domain, field, h))
			if err != nil {
				return p, fmt.Errorf("%w: chunk %s of %s: %v", ErrListIncomplete, h, field, err)
			}
			entries, err := decodeChunk(e.Value(), h)
			if err != nil {
				return p, err
			}
			list = append(list, entries...)
		}
		slices.SortFunc(list, func(a, b string) int { return cmp.Compare(strings.ToLower(a), strings.ToLower(b)) })
		*p.list(field) = list
	}
	p.refs = nil
	p.index, p.bindex = lowerSet(p.Mailboxes), lowerSet(p.Bypass)
	return p, nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
