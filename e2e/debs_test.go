package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// aptGet runs apt-get with args in dir ("": the current one); on failure
// (package lists old or missing) it updates them and tries once more.
func aptGet(t *testing.T, dir string, args ...string) {
	t.Helper()
	run := func() ([]byte, error) {
		cmd := exec.Command("apt-get", args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		return cmd.CombinedOutput()
	}
	if _, err := run(); err == nil {
		return
	}
	if out, err := exec.Command("apt-get", "update", "-qq").CombinedOutput(); err != nil {
		t.Fatalf("apt-get update: %v %s", err, out)
	}
	if out, err := run(); err != nil {
		t.Fatalf("apt-get %v: %v %s", args, err, out)
	}
}

// unpackDebs downloads Debian packages into dir and unpacks them into
// dir/root (apt-get download, dpkg -x), for MTAs whose packages conflict
// with the installed Postfix. It does nothing when want exists already.
func unpackDebs(t *testing.T, dir, want string, pkgs ...string) {
	t.Helper()
	if _, err := os.Stat(want); err == nil {
		return
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, p := range pkgs {
		aptGet(t, dir, "download", p)
		debs, _ := filepath.Glob(filepath.Join(dir, p+"_*.deb"))
		if len(debs) == 0 {
			t.Fatalf("%s not downloaded", p)
		}
		if out, err := exec.Command("dpkg", "-x", debs[0], filepath.Join(dir, "root")).CombinedOutput(); err != nil {
			t.Fatalf("dpkg -x %s: %v %s", p, err, out)
		}
	}
	if _, err := os.Stat(want); err != nil {
		t.Fatalf("%s not in the unpacked packages %v: %v", want, pkgs, err)
	}
}
