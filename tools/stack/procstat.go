package stack

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// ProcCPU is a process's CPU time from /proc/<pid>/stat, in clock ticks of
// 1/100 s: its own (user and system) and that of the children it has
// reaped, with its parent's pid.
type ProcCPU struct {
	PPID         int
	Self, Reaped float64
}

// ReadProcCPU reads pid's CPU time.
func ReadProcCPU(pid int) (ProcCPU, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ProcCPU{}, err
	}
	// After the command (which may hold spaces and parentheses): ppid is
	// the 4th field, utime and stime the 14th and 15th, cutime and cstime
	// the 16th and 17th.
	f := strings.Fields(string(data[bytes.LastIndexByte(data, ')')+1:]))
	if len(f) < 15 {
		return ProcCPU{}, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	n := func(i int) float64 { v, _ := strconv.ParseFloat(f[i], 64); return v }
	ppid, _ := strconv.Atoi(f[1])
	return ProcCPU{PPID: ppid, Self: n(11) + n(12), Reaped: n(13) + n(14)}, nil
}

// Pids lists the running processes.
func Pids() []int {
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range entries {
		if pid, err := strconv.Atoi(e.Name()); err == nil {
			out = append(out, pid)
		}
	}
	return out
}
