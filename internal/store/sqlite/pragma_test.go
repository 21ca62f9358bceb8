package sqlite

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestWriterPragmas: the writer commits with fsync (synchronous=FULL, 2) in
// WAL mode, enforces foreign keys and waits on locks; readers cannot write.
func TestWriterPragmas(t *testing.T) {
	db, err := Open(context.Background(), filepath.Join(t.TempDir(), "g.db"))
	require.NoError(t, err)
	defer db.Close()
	for pragma, want := range map[string]string{
		"synchronous": "2", "journal_mode": "wal", "foreign_keys": "1", "busy_timeout": "5000",
	} {
		var got string
		require.NoError(t, db.w.QueryRow("PRAGMA "+pragma).Scan(&got))
		require.Equal(t, want, got, pragma)
	}
	var q string
	require.NoError(t, db.r.QueryRow("PRAGMA query_only").Scan(&q))
	require.Equal(t, "1", q)
}
