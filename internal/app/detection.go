package app

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"time"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/detect"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/intel"
	"github.com/garrisonhq/garrison/internal/ota"
	"github.com/garrisonhq/garrison/internal/platform"
	"github.com/garrisonhq/garrison/internal/registry"
	"github.com/garrisonhq/garrison/internal/respond"
	"github.com/garrisonhq/garrison/internal/store"
)

// startIntel loads the threat-intelligence feeds file (a bad one fails
// the start, naming the entry) and, when detection runs, reads every feed
// in the background and refreshes each on its schedule until Stop. The
// API lists the feeds from the start.
func (a *App) startIntel(ctx context.Context) error {
	specs, err := intel.Load(a.cfg.Detect.FeedsFile, a.cfg.Detect.FeedRefresh)
	if err != nil {
		return err
	}
	a.threatIntel = detect.NewThreatIntel()
	a.feeds, err = intel.New(intel.Options{Intel: a.threatIntel, Feeds: specs, Timeout: a.cfg.Detect.FeedTimeout,
		MaxBytes: a.cfg.Detect.FeedMaxBytes, Clock: a.clk, Logger: a.log.With("component", "intel"), Registerer: a.metrics})
	if err != nil {
		return err
	}
	if a.noDetect || len(specs) == 0 {
		return nil
	}
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	a.onStop("threat-intelligence feeds", func(context.Context) error {
		cancel()
		<-done
		return nil
	})
	feeds := a.feeds
	a.goroutine("threat-intelligence feeds", func() error {
		defer close(done)
		feeds.RefreshAll(rctx)
		feeds.Run(rctx)
		return nil
	})
	a.log.Info("threat-intelligence feeds configured", "feeds", len(specs), "file", a.cfg.Detect.FeedsFile)
	return nil
}

// startDetection runs the detection and response plane on the bus: every
// event the broker and the other ingestion components publish goes through
// the detectors; alerts are stored and the default playbooks act on them
// through the registry (quarantine, SIM suspension, revocation), which the
// broker then enforces on live sessions.
func (a *App) startDetection(ctx context.Context) error {
	if a.noDetect {
		return nil
	}
	dir := platform.NewStoreDirectory(a.store, a.clk)
	n, err := platform.LoadDirectory(ctx, a.store, dir)
	if err != nil {
		return fmt.Errorf("load device profiles: %w", err)
	}
	reg, err := registry.New(registry.Options{Store: a.store, Clock: a.clk, Logger: a.log.With("component", "registry"), Publisher: a.bus})
	if err != nil {
		return err
	}
	if err := a.loadFirmwareView(ctx); err != nil {
		return err
	}
	settings, err := platform.LoadSettings(ctx, a.store, a.log.With("component", "detect"))
	if err != nil {
		return err
	}
	var resp *respond.Engine
	det, err := platform.NewDetection(platform.Options{
		Bus: a.bus, Store: a.store, Directory: dir, Clock: a.clk, Logger: a.log.With("component", "detect"), Settings: settings,
		Intel:     a.threatIntel,
		Rules:     a.rules.Set(),
		Catalog:   a.fwView,
		Responder: lateResponder{&resp},
	})
	if err != nil {
		return err
	}
	backend := a.responseBackend(reg)
	resp, err = respond.New(respond.Options{
		Store: a.store, Clock: a.clk, Logger: a.log.With("component", "respond"),
		Quarantiner: backend, Disconnecter: backend, SIMBlocker: backend, Revoker: backend, Alerts: det, Publisher: a.bus,
		Notifier: a.incidents.webhooks, Incidents: a.incidents.svc, Updates: updatesBackend{a},
	})
	if err != nil {
		return err
	}
	if err := a.startMass(ctx, resp); err != nil { // response.go
		return err
	}
	restored := a.restoreSnapshot(det.Engine)
	if err := det.Start(ctx); err != nil {
		return err
	}
	a.detection = det
	a.detectors.set(det.Engine)
	// Stop the consumers first (no Process call runs after Stop returns),
	// then save what was learned: a consistent cut.
	a.onStop("detection", func(context.Context) error {
		det.Stop()
		return a.saveSnapshot(det.Engine)
	})
	a.snapshotPeriodically(ctx, det.Engine)
	a.reloadSettingsPeriodically(ctx)
	a.log.Info("detection started", "devices", n, "restored_devices", restored)
	return nil
}

// Detection is the running detection and response plane (nil before
// Start, or with Options.NoDetection).
func (a *App) Detection() *platform.Detection { return a.detection }

// snapshotFile is where serve keeps detection's learned state.
func (a *App) snapshotFile() string { return filepath.Join(a.data, "detect", "snapshot") }

// restoreSnapshot loads the state saved by the last stop (or periodic
// save), before the consumers start. A missing snapshot is a first start;
// one that cannot be restored is moved aside (snapshot.bad) and detection
// starts from nothing, learning again. It returns the devices restored.
func (a *App) restoreSnapshot(eng *detect.Engine) int {
	path := a.snapshotFile()
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return 0
	}
	if err == nil {
		err = eng.Restore(b)
	}
	if err != nil {
		a.log.Error("detection snapshot not restored; learning again from nothing", "path", path, "err", err)
		_ = os.Rename(path, path+".bad")
		return 0
	}
	return eng.Devices()
}

// saveSnapshot writes the engine's state atomically (temporary file,
// fsync, rename), so a crash while saving keeps the previous snapshot.
func (a *App) saveSnapshot(eng *detect.Engine) error {
	b, err := eng.Snapshot()
	if err != nil {
		return err
	}
	path := a.snapshotFile()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("detection snapshot: %w", err)
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("detection snapshot: %w", err)
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("detection snapshot: %w", err)
	}
	a.log.Info("detection snapshot saved", "path", path, "bytes", len(b), "devices", eng.Devices())
	return nil
}

// snapshotPeriodically saves the state every detect.snapshot_interval
// while running, so a crash loses at most that much learning. Such a
// snapshot is taken while events are processed: each device's state is
// consistent, the whole is not a single cut (the one at stop is).
func (a *App) snapshotPeriodically(ctx context.Context, eng *detect.Engine) {
	every := a.cfg.Detect.SnapshotInterval
	if every <= 0 {
		return
	}
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	a.onStop("detection snapshots", func(context.Context) error {
		cancel()
		<-done
		return nil
	})
	a.goroutine("detection snapshots", func() error {
		defer close(done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-rctx.Done():
				return nil
			case <-t.C:
				if err := a.saveSnapshot(eng); err != nil {
					a.log.Error("periodic detection snapshot failed", "err", err)
				}
			}
		}
	})
}

// firmwareView returns detection's view of the firmware catalog, created
// on first use: the catalog (an ota.Observer) keeps it current as
// releases are added and minimum versions set.
func (a *App) firmwareView() ota.Observer {
	if a.fwView == nil {
		a.fwView = detect.NewMemCatalog()
	}
	return catalogView{a.fwView}
}

type catalogView struct{ m *detect.MemCatalog }

func (v catalogView) ReleaseAdded(t event.TenantID, e ota.Entry) {
	for _, model := range e.Models {
		v.m.Put(t, model, e.Version, e.Digest)
	}
}

func (v catalogView) MinVersionSet(t event.TenantID, model, version string) {
	v.m.SetMinVersion(t, model, version)
}

// loadFirmwareView fills detection's view of the firmware catalog from
// the store: every tenant's signed releases, and the minimum version of
// every model that has a release or a device.
func (a *App) loadFirmwareView(ctx context.Context) error {
	view := a.firmwareView().(catalogView)
	var tenants []store.Tenant
	models := map[event.TenantID]map[string]bool{}
	err := a.store.View(ctx, func(tx store.Tx) error {
		var err error
		if tenants, err = tx.Tenants().List(ctx); err != nil {
			return err
		}
		for _, t := range tenants {
			models[t.ID] = map[string]bool{}
			var after event.DeviceID
			for {
				devs, err := tx.Devices().List(ctx, t.ID, store.DeviceFilter{After: after, Limit: 1000})
				if err != nil {
					return err
				}
				for _, d := range devs {
					models[t.ID][d.Model] = true
				}
				if len(devs) < 1000 {
					break
				}
				after = devs[len(devs)-1].ID
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("load firmware catalog: %w", err)
	}
	releases := 0
	for _, t := range tenants {
		es, err := a.otaCatalog.Releases(ctx, t.ID)
		if err != nil {
			return fmt.Errorf("load firmware catalog: %w", err)
		}
		for _, e := range es {
			view.ReleaseAdded(t.ID, e)
			for _, m := range e.Models {
				models[t.ID][m] = true
			}
		}
		releases += len(es)
		for m := range models[t.ID] {
			if m == "" {
				continue
			}
			v, ok, err := a.otaCatalog.MinVersion(ctx, t.ID, m)
			if err != nil {
				return fmt.Errorf("load firmware catalog: %w", err)
			}
			if ok {
				view.MinVersionSet(t.ID, m, v)
			}
		}
	}
	a.log.Info("firmware catalog loaded for detection", "releases", releases)
	return nil
}

// engineRef hands detector settings changes made through the API to the
// detection engine once it runs (the API starts first). Before that, and
// without detection, changes are only stored: startDetection loads them.
type engineRef struct {
	mu  sync.Mutex
	eng *detect.Engine
}

func (r *engineRef) set(e *detect.Engine) {
	r.mu.Lock()
	r.eng = e
	r.mu.Unlock()
}

// settingsReloadEvery is how often serve re-reads every tenant's detector
// settings, to apply changes made through another node's API.
const settingsReloadEvery = 30 * time.Second

// reload reads every tenant's settings from the store and applies them if
// they differ from the engine's. It holds the lock across read and apply,
// so an API change committed meanwhile is never overwritten by an older
// read (the API applies its change under the same lock).
func (r *engineRef) reload(ctx context.Context, st store.Store, log *slog.Logger) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.eng == nil {
		return nil
	}
	s, err := platform.LoadSettings(ctx, st, log)
	if err != nil {
		return err
	}
	cur := r.eng.Settings()
	if len(s.Overrides) == 0 && len(cur.Overrides) == 0 || reflect.DeepEqual(s.Overrides, cur.Overrides) {
		return nil
	}
	log.Info("detector settings changed in the store; applied")
	return r.eng.SetSettings(s)
}

func (a *App) reloadSettingsPeriodically(ctx context.Context) {
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	a.onStop("detector settings reload", func(context.Context) error {
		cancel()
		<-done
		return nil
	})
	log := a.log.With("component", "detect")
	a.goroutine("detector settings reload", func() error {
		defer close(done)
		t := time.NewTicker(settingsReloadEvery)
		defer t.Stop()
		for {
			select {
			case <-rctx.Done():
				return nil
			case <-t.C:
				if err := a.detectors.reload(rctx, a.store, log); err != nil && rctx.Err() == nil {
					log.Warn("reload detector settings", "err", err)
				}
			}
		}
	})
}

// SetTenantSettings implements api.DetectorEngine.
func (r *engineRef) SetTenantSettings(t event.TenantID, ts detect.TenantSettings) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.eng == nil {
		return nil
	}
	return r.eng.SetTenantSettings(t, ts)
}

// lateResponder is detection's Responder: the response engine, built after
// detection (which is the engine's alert sink). Besides alerts it takes the
// operators' alert state changes (platform.StateResponder), so a false
// positive resolved through the API restores devices.
type lateResponder struct{ e **respond.Engine }

var _ platform.StateResponder = lateResponder{}

func (r lateResponder) Handle(ctx context.Context, a alert.Alert) error { return (*r.e).Handle(ctx, a) }

func (r lateResponder) AlertStateChanged(ctx context.Context, t event.TenantID, alertID string, to alert.State, actor string) error {
	return (*r.e).AlertStateChanged(ctx, t, alertID, to, actor)
}
