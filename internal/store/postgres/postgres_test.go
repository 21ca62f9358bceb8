package postgres_test

import (
	"testing"

	"github.com/garrisonhq/garrison/internal/store"
	"github.com/garrisonhq/garrison/internal/store/postgres/pgtest"
	"github.com/garrisonhq/garrison/internal/store/storetest"
)

func TestConformance(t *testing.T) {
	pgtest.URL(t)
	storetest.Run(t, func(t *testing.T) store.Store { return pgtest.Open(t) })
}
