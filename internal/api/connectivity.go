package api

import (
	"context"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"reflect"
	"time"

	"github.com/garrisonhq/garrison/internal/auth"
	"github.com/garrisonhq/garrison/internal/connectivity"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

// ConnectivityIngester takes the session and location records providers
// push by webhook (*connectivity.Ingester): it validates the whole request
// (returning a *connectivity.ValidationError) before publishing anything.
type ConnectivityIngester interface {
	Ingest(ctx context.Context, tenant event.TenantID, req connectivity.EventsRequest) (connectivity.IngestResult, error)
}

// CellCache is told when an import changed the cell table, so cached
// lookups are dropped (*connectivity.CellTable).
type CellCache interface {
	Invalidate()
}

// cellImportTimeout bounds one cell-table upload.
const cellImportTimeout = 2 * time.Hour

// cellBatch is how many rows one store transaction (and audit record)
// of a cell import carries.
const cellBatch = 5000

func (s *Server) connectivityRoutes(t, p string) []Route {
	post := http.MethodPost
	imp := Route{Method: post, Pattern: p + "/cells/import", Perm: auth.PermPlatform, Scope: ScopePlatform, Status: http.StatusOK,
		Summary: "Import cells (CSV in the OpenCellID layout: radio,mcc,net,area,cell[,unit],lon,lat,range,...), streamed; bad rows are reported by line and skipped.",
		Resp:    reflect.TypeFor[connectivity.ImportResult](), Body: "text/csv", handle: (*Server).importCells}
	return []Route{
		op(post, t+"/connectivity/events", auth.PermConnectivityWrite, ScopeTenant, http.StatusAccepted,
			"Ingest session and location records pushed by a connectivity platform (webhook); all records are checked before any is published.", (*Server).ingestConnectivity),
		imp,
	}
}

func (s *Server) ingestConnectivity(ctx context.Context, c *call, req connectivity.EventsRequest) (connectivity.IngestResult, error) {
	if s.opt.Connectivity == nil {
		return connectivity.IngestResult{}, errorf(http.StatusServiceUnavailable, CodeUnavailable, "connectivity ingestion is not running on this server")
	}
	res, err := s.opt.Connectivity.Ingest(ctx, c.tenant, req)
	var ve *connectivity.ValidationError
	switch {
	case errors.As(err, &ve):
		msg := ve.Error()
		if len(msg) > 2000 {
			msg = msg[:2000] + "..."
		}
		return res, &Error{Status: http.StatusBadRequest, Code: CodeInvalid, Message: msg, Err: err}
	case err != nil:
		return res, &Error{Status: http.StatusServiceUnavailable, Code: CodeUnavailable, Message: "records not (all) published; retry the request", Err: err}
	}
	err = s.opt.Store.Update(ctx, func(tx store.Tx) error {
		return s.audit(ctx, tx, c, c.tenant, "connectivity.events", "connectivity", res)
	})
	return res, err
}

func (s *Server) importCells(w http.ResponseWriter, c *call) error {
	mt, _, err := mime.ParseMediaType(c.r.Header.Get("Content-Type"))
	if err != nil || mt != "text/csv" {
		return errorf(http.StatusUnsupportedMediaType, CodeUnsupportedMedia, "body must be text/csv (a cell table)")
	}
	rc := http.NewResponseController(w)
	deadline := time.Now().Add(cellImportTimeout)
	_ = rc.SetReadDeadline(deadline) // not every ResponseWriter supports it (tests)
	_ = rc.SetWriteDeadline(deadline)
	limit := s.opt.CellImportMaxBytes
	if limit <= 0 {
		limit = 1 << 30
	}
	body := http.MaxBytesReader(w, c.r.Body, limit)
	ctx := c.r.Context()
	res, err := connectivity.ImportCSV(ctx, body, s.opt.Clock.Now().UTC(), cellBatch, func(ctx context.Context, cells []store.Cell) error {
		return s.opt.Store.Update(ctx, func(tx store.Tx) error {
			if err := tx.Cells().Put(ctx, cells); err != nil {
				return err
			}
			return s.audit(ctx, tx, c, "", "cells.import", "cells", map[string]int{"cells": len(cells)})
		})
	})
	if res.Imported > 0 && s.opt.CellCache != nil {
		s.opt.CellCache.Invalidate()
	}
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		return &Error{Status: http.StatusRequestEntityTooLarge, Code: CodeTooLarge,
			Message: fmt.Sprintf("cell file larger than %d bytes (%d rows imported before the limit)", limit, res.Imported), Err: err}
	case errors.Is(err, connectivity.ErrCellFile):
		return &Error{Status: http.StatusBadRequest, Code: CodeInvalid,
			Message: fmt.Sprintf("%s (%d rows imported before it)", trimJSON(err.Error()), res.Imported), Err: err}
	case err != nil:
		return err
	}
	s.opt.Logger.InfoContext(ctx, "cells imported", "rows", res.Rows, "imported", res.Imported, "rejected", res.Rejected, "actor", c.p.Actor())
	writeJSON(w, http.StatusOK, res)
	return nil
}
