package verdict

import (
	"go/ast"
	"go/parser"
	"go/token"
	"strings"
	"testing"
)

// Every Reason constant declared in this package is a row of the table,
// once, with what an operator needs to read it.
func TestReasonTableComplete(t *testing.T) {
	f, err := parser.ParseFile(token.NewFileSet(), "reasons.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	declared := map[string]bool{}
	for _, d := range f.Decls {
		g, ok := d.(*ast.GenDecl)
		if !ok || g.Tok != token.CONST {
			continue
		}
		for _, sp := range g.Specs {
			vs := sp.(*ast.ValueSpec)
			if id, ok := vs.Type.(*ast.Ident); ok && id.Name == "Reason" {
				for _, v := range vs.Values {
					declared[strings.Trim(v.(*ast.BasicLit).Value, `"`)] = true
				}
			}
		}
	}
	seen := map[Reason]bool{}
	for _, ri := range Reasons() {
		if seen[ri.Reason] {
			t.Errorf("%s: twice in the table", ri.Reason)
		}
		seen[ri.Reason] = true
		if !declared[string(ri.Reason)] {
			t.Errorf("%s: in the table but not a declared constant", ri.Reason)
		}
		if ri.By != "ingest" && ri.By != "prober" {
			t.Errorf("%s: given by %q", ri.Reason, ri.By)
		}
		if ri.Meaning == "" || ri.Action == "" || strings.Contains(ri.Meaning+ri.Action, "|") {
			t.Errorf("%s: meaning and action must be set, without |", ri.Reason)
		}
		if len(ri.Statuses) == 0 && !ri.Fact {
			t.Errorf("%s: neither an answer's status nor a fact", ri.Reason)
		}
	}
	for r := range declared {
		if !seen[Reason(r)] {
			t.Errorf("%s: declared but not in the table", r)
		}
	}
	if _, ok := About("no_such_reason"); ok {
		t.Error("About found a reason that does not exist")
	}
}

// MayReject is what Decide does: a reason may reject exactly when some
// policy turns one of its statuses into a 5xx.
func TestReasonMayReject(t *testing.T) {
	var policies []Policy
	for _, pu := range []Purpose{Recipient, Sender} {
		for _, tf := range []Action{Defer, Accept} {
			for _, un := range []Action{Accept, Defer} {
				policies = append(policies, Policy{Purpose: pu, OnTempfail: tf, OnUnverifiable: un})
			}
		}
	}
	for _, ri := range Reasons() {
		rejects := false
		for _, st := range ri.Statuses {
			// The strongest form of each: a 5xx from the destination or
			// a static list.
			for _, src := range []Source{SourceProbe, SourceStatic} {
				v := Verdict{Kind: KindAddress, Address: "a@example.org", Status: st, Reason: ri.Reason, Code: 550, Source: src}
				for _, p := range policies {
					if Decide(v, p).Action == Reject {
						rejects = true
					}
				}
			}
		}
		if rejects != ri.MayReject {
			t.Errorf("%s: the table says may reject %v, Decide says %v", ri.Reason, ri.MayReject, rejects)
		}
	}
}
