package bus

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"

	"github.com/nats-io/nats.go/jetstream"
)

// ArtifactsBucket is the object store bucket where the nodes of a
// deployment share firmware artifacts (named by their hex SHA-256).
const ArtifactsBucket = "garrison-artifacts"

// Objects is a JetStream object store bucket: files of any size, cut in
// chunks (128 KiB) stored in the bucket's stream OBJ_<bucket>, on the
// server's file storage with the bus's Options.Replicas.
type Objects struct {
	name string
	os   jetstream.ObjectStore
}

// Objects creates the bucket (Options.StreamPrefix + bucket) or updates
// it to the current settings, and returns it. On the embedded bus it
// lives on the EVENTS server (written to the OS before the ack, fsync'd
// every Options.SyncInterval).
func (b *Bus) Objects(ctx context.Context, bucket string) (*Objects, error) {
	if b.isClosed() {
		return nil, ErrClosed
	}
	name := b.opts.StreamPrefix + bucket
	o, err := b.evJS.CreateOrUpdateObjectStore(ctx, jetstream.ObjectStoreConfig{
		Bucket:      name,
		Description: "Garrison objects shared by the nodes",
		Storage:     jetstream.FileStorage,
		Replicas:    b.opts.Replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("bus: object store %s: %w", name, err)
	}
	return &Objects{name: name, os: o}, nil
}

// Put stores r under name, replacing an object of that name. It returns
// once the server has stored every chunk.
func (o *Objects) Put(ctx context.Context, name string, r io.Reader) error {
	if _, err := o.os.Put(ctx, jetstream.ObjectMeta{Name: name}, r); err != nil {
		return fmt.Errorf("bus: put %s/%s: %w", o.name, name, err)
	}
	return nil
}

// Open streams the object named name. The reader returns an error at the
// end if the bytes do not match the SHA-256 the server recorded with the
// object. A missing object is an error wrapping fs.ErrNotExist.
func (o *Objects) Open(ctx context.Context, name string) (io.ReadCloser, error) {
	r, err := o.os.Get(ctx, name)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return nil, fmt.Errorf("bus: object %s/%s: %w", o.name, name, fs.ErrNotExist)
	}
	if err != nil {
		return nil, fmt.Errorf("bus: get %s/%s: %w", o.name, name, err)
	}
	return r, nil
}

// Digest returns the SHA-256 and size the server recorded for the object
// named name; a missing object is an error wrapping fs.ErrNotExist.
func (o *Objects) Digest(ctx context.Context, name string) ([]byte, int64, error) {
	info, err := o.os.GetInfo(ctx, name)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return nil, 0, fmt.Errorf("bus: object %s/%s: %w", o.name, name, fs.ErrNotExist)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("bus: object info %s/%s: %w", o.name, name, err)
	}
	sum, err := jetstream.DecodeObjectDigest(info.Digest)
	if err != nil {
		return nil, 0, fmt.Errorf("bus: object info %s/%s: %w", o.name, name, err)
	}
	return sum, int64(info.Size), nil
}

// Delete removes the object named name (its chunks are purged); a
// missing object is not an error.
func (o *Objects) Delete(ctx context.Context, name string) error {
	if err := o.os.Delete(ctx, name); err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
		return fmt.Errorf("bus: delete %s/%s: %w", o.name, name, err)
	}
	return nil
}
