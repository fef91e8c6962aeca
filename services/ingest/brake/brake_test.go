package brake

import (
	"net/netip"
	"runtime"
	"strconv"
	"testing"
	"time"
)

func TestBrake(t *testing.T) {
	now := time.Unix(1000, 0)
	b := New(Config{Limit: 3, Window: time.Minute})
	b.now = func() time.Time { return now }
	for i := 0; i < 2; i++ {
		b.Invalid("192.0.2.1")
	}
	if b.Braked("192.0.2.1") {
		t.Fatal("braked below the limit")
	}
	b.Invalid("192.0.2.1")
	if !b.Braked("192.0.2.1") || b.Braked("192.0.2.2") || b.Braked("") {
		t.Fatal("brake state wrong at the limit")
	}
	if !b.Braked("::ffff:192.0.2.1") {
		t.Fatal("an IPv4-mapped address is the same client")
	}
	now = now.Add(2 * time.Minute)
	if b.Braked("192.0.2.1") {
		t.Fatal("brake outlived its window")
	}
	off := New(Config{Limit: 0, Window: time.Minute})
	for i := 0; i < 10; i++ {
		off.Invalid("x")
	}
	if off.Braked("x") {
		t.Fatal("disabled brake braked")
	}
}

// New IPv6 addresses from one /64 are one client.
func TestIPv6Prefix(t *testing.T) {
	b := New(Config{Limit: 3, Window: time.Minute})
	for _, a := range []string{"2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff::9"} {
		b.Invalid(a)
	}
	if !b.Braked("2001:db8:1:2::abcd") || b.Braked("2001:db8:1:3::1") {
		t.Fatal("IPv6 not keyed by /64")
	}
	narrow := New(Config{Limit: 3, Window: time.Minute, IPv6Prefix: 128})
	for _, a := range []string{"2001:db8::1", "2001:db8::2", "2001:db8::3"} {
		narrow.Invalid(a)
	}
	if narrow.Braked("2001:db8::4") {
		t.Fatal("/128 keying braked another address")
	}
}

// Memory stays bounded whatever the number of clients; the least recently
// seen is forgotten first.
func TestBounded(t *testing.T) {
	b := New(Config{Limit: 2, Window: time.Hour, MaxClients: 1000})
	b.Invalid("192.0.2.1")
	b.Invalid("192.0.2.1")
	for i := 0; i < 100000; i++ {
		b.Invalid(ip4(i))
		if i%100 == 0 {
			b.Invalid("192.0.2.1") // kept recent
		}
	}
	if n := b.Len(); n > 1000 {
		t.Fatalf("%d clients remembered, bound 1000", n)
	}
	if !b.Braked("192.0.2.1") {
		t.Fatal("a recently seen client was forgotten")
	}
}

func ip4(i int) string {
	return netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}).String()
}

// BenchmarkDistinctClients: new clients at every call, the brake already
// holding fill clients (its bound is 100,000). The time per call and the
// memory stay the same at 100,000 and at 1,000,000 distinct clients.
func BenchmarkDistinctClients(b *testing.B) {
	for _, fill := range []int{100_000, 1_000_000} {
		b.Run("clients="+strconv.Itoa(fill), func(b *testing.B) {
			br := New(Config{Limit: 50, Window: time.Hour, MaxClients: 100_000})
			for i := 0; i < fill; i++ {
				br.Invalid(ip4(i))
			}
			clients := make([]string, 1<<16)
			for i := range clients {
				clients[i] = ip4(fill + i)
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				c := clients[i&(len(clients)-1)]
				br.Invalid(c)
				_ = br.Braked(c)
			}
			b.StopTimer()
			var ms runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&ms)
			b.ReportMetric(float64(br.Len()), "clients")
			b.ReportMetric(float64(ms.HeapAlloc)/(1<<20), "heap-MiB")
		})
	}
}
