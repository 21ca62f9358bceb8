package main

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestMassSelectorText(t *testing.T) {
	for _, tc := range []struct {
		name string
		sel  massSelector
		want string
		err  string
	}{
		{"nothing is refused", massSelector{}, "", "--selector '*'"},
		{"all, written out", massSelector{raw: " * "}, "*", ""},
		{"raw", massSelector{raw: "model=cam,tag=site:north"}, "model=cam,tag=site:north", ""},
		{"flags spell the terms", massSelector{model: "cam", firmware: "1.2", state: "active", group: "g", tag: "site:north",
			imsiPrefix: "21401", seenOver: "7d", seenWithin: "1h", openAlert: "net.telnet_scan"},
			"model=cam,firmware=1.2,state=active,group=g,tag=site:north,imsi^=21401,last_seen>7d,last_seen<1h,alert=net.telnet_scan", ""},
		{"flags join the raw text", massSelector{raw: "group=g", model: "cam"}, "group=g,model=cam", ""},
		{"a star with flags is just the flags", massSelector{raw: "*", model: "cam"}, "model=cam", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.sel.text()
			if tc.err != "" {
				require.ErrorContains(t, err, tc.err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
		})
	}
}

func TestSplitProblems(t *testing.T) {
	require.Equal(t, []string{"line 3: a", "line 7: b; mass actions also take x", "line 9: c"},
		splitProblems("line 3: a; line 7: b; mass actions also take x; line 9: c"))
	require.Equal(t, []string{"line 1: empty document"}, splitProblems("line 1: empty document"))
}
