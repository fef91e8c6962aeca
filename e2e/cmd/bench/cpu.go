package main

// CPU time of the processes and of the machine.

import (
	"encoding/json"
	"net/http"
	_ "net/http/pprof"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/callout-mail/callout/tools/stack"
)

// cpuSample is CPU time in clock ticks of 1/100 s: of each process of
// the run and of the load generator ("bench"), and of the whole machine.
type cpuSample struct {
	procs map[string]float64
	// The machine's busy, idle and stolen time (/proc/stat's first line:
	// user, nice, system, idle, iowait, irq, softirq, steal), when read.
	// The host takes cores from this machine when it is busy itself: what
	// is stolen explains most of the spread between runs, and the
	// processes' own figures count some of it as theirs.
	machine            bool
	busy, idle, stolen float64
}

// procsSince is the ticks all processes used from before to c.
func (c cpuSample) procsSince(before cpuSample) float64 {
	all := 0.0
	for name, v := range c.procs {
		all += v - before.procs[name]
	}
	return all
}

func (b *bench) cpuTicks() cpuSample {
	pids := map[string]int{"bench": os.Getpid()}
	for name, p := range b.procs {
		pids[name] = p.Pid()
	}
	c := cpuSample{procs: map[string]float64{}}
	for name, pid := range pids {
		if pc, err := stack.ReadProcCPU(pid); err == nil {
			c.procs[name] = pc.Self
		}
	}
	if data, err := os.ReadFile("/proc/stat"); err == nil {
		line, _, _ := strings.Cut(string(data), "\n")
		if f := strings.Fields(line); len(f) > 8 && f[0] == "cpu" {
			v := make([]float64, 8)
			for i := range v {
				v[i], _ = strconv.ParseFloat(f[i+1], 64)
			}
			c.machine = true
			c.busy, c.idle, c.stolen = v[0]+v[1]+v[2]+v[5]+v[6], v[3]+v[4], v[7]
		}
	}
	return c
}

// addCPU reports the cores each process and the machine used between two
// cpuTicks.
func (b *bench) addCPU(sec string, before, after cpuSample, el time.Duration, n int64) {
	names := make([]string, 0, len(after.procs))
	for n := range after.procs {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		b.add(sec, "CPU "+n, (after.procs[n]-before.procs[n])/100/el.Seconds(), "cores")
	}
	total := after.procsSince(before) / 100
	b.add(sec, "CPU, all processes", total/el.Seconds(), "cores")
	if after.machine {
		b.add(sec, "machine: busy", (after.busy-before.busy)/100/el.Seconds(), "cores")
		b.add(sec, "machine: idle", (after.idle-before.idle)/100/el.Seconds(), "cores")
		b.add(sec, "machine: stolen by the host", (after.stolen-before.stolen)/100/el.Seconds(), "cores")
	}
	if n > 0 {
		b.add(sec, "CPU per verify, all processes", total/float64(n)*1e6, "µs")
		if after.machine {
			b.add(sec, "CPU per verify, machine (stolen time left out)", (after.busy-before.busy)/100/float64(n)*1e6, "µs")
		}
	}
}

// natsTraffic is what nats-server has received and sent since it started
// (its /varz): messages and bytes.
type natsTraffic struct {
	InMsgs   int64 `json:"in_msgs"`
	OutMsgs  int64 `json:"out_msgs"`
	InBytes  int64 `json:"in_bytes"`
	OutBytes int64 `json:"out_bytes"`
}

func (b *bench) natsTraffic() natsTraffic {
	var t natsTraffic
	r, err := http.Get(b.monitor + "/varz")
	if err != nil {
		return t
	}
	defer r.Body.Close()
	_ = json.NewDecoder(r.Body).Decode(&t)
	return t
}

// addTraffic adds the messages and bytes through nats-server per verify
// between two samples: what the design costs the server, whatever the
// host's speed.
func (b *bench) addTraffic(sec string, before, after natsTraffic, n int64) {
	if n == 0 || after.InMsgs == 0 {
		return
	}
	per := func(a, b int64) float64 { return float64(a-b) / float64(n) }
	b.add(sec, "nats-server: messages in per verify", per(after.InMsgs, before.InMsgs), "")
	b.add(sec, "nats-server: messages out per verify", per(after.OutMsgs, before.OutMsgs), "")
	b.add(sec, "nats-server: bytes in per verify", per(after.InBytes, before.InBytes), "B")
	b.add(sec, "nats-server: bytes out per verify", per(after.OutBytes, before.OutBytes), "B")
}
