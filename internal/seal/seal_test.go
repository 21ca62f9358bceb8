package seal

import (
	"bytes"
	"errors"
	"fmt"
	"sync"
	"testing"
)

const testPass = "correct horse battery staple"

func TestSealerRoundTrip(t *testing.T) {
	s, err := New([]byte(testPass), WithScryptCost(10, 8, 1))
	if err != nil {
		t.Fatal(err)
	}
	pt := []byte("private key material")
	a, err := s.Seal(pt, []byte("label"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := s.Seal(pt, []byte("label"))
	if bytes.Equal(a, b) {
		t.Fatal("two seals of the same plaintext are equal: salt or nonce not random")
	}
	if bytes.Contains(a, pt) {
		t.Fatal("plaintext visible in sealed blob")
	}
	got, err := s.Open(a, []byte("label"))
	if err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("Open = %q, %v", got, err)
	}
	// A blob made at a higher cost opens with a Sealer configured otherwise:
	// the cost travels in the blob.
	hi, _ := New([]byte(testPass), WithScryptCost(11, 8, 1))
	c, _ := hi.Seal(pt, nil)
	if got, err := s.Open(c, nil); err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("open cross-cost: %q, %v", got, err)
	}
}

func TestSealerRefuses(t *testing.T) {
	s, _ := New([]byte(testPass), WithScryptCost(10, 8, 1))
	other, _ := New([]byte("another passphrase!"), WithScryptCost(10, 8, 1))
	blob, err := s.Seal([]byte("secret"), []byte("ca:a:1"))
	if err != nil {
		t.Fatal(err)
	}
	mut := func(f func([]byte)) []byte { b := bytes.Clone(blob); f(b); return b }
	tests := []struct {
		name  string
		s     *Sealer
		blob  []byte
		label string
		want  error
	}{
		{"wrong passphrase", other, blob, "ca:a:1", ErrWrongPassphrase},
		{"wrong label", s, blob, "ca:b:1", ErrWrongPassphrase},
		{"flipped ciphertext bit", s, mut(func(b []byte) { b[len(b)-1] ^= 1 }), "ca:a:1", ErrWrongPassphrase},
		{"flipped salt bit", s, mut(func(b []byte) { b[10] ^= 1 }), "ca:a:1", ErrWrongPassphrase},
		{"bad magic", s, mut(func(b []byte) { b[0] = 'X' }), "ca:a:1", ErrFormat},
		{"unknown version", s, mut(func(b []byte) { b[4] = 9 }), "ca:a:1", ErrFormat},
		{"absurd cost", s, mut(func(b []byte) { b[6] = 40 }), "ca:a:1", ErrFormat},
		{"truncated", s, blob[:20], "ca:a:1", ErrFormat},
		{"empty", s, nil, "ca:a:1", ErrFormat},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.s.Open(tc.blob, []byte(tc.label))
			if !errors.Is(err, tc.want) {
				t.Fatalf("Open: %v, want %v", err, tc.want)
			}
		})
	}
	if _, err := New([]byte("short")); !errors.Is(err, ErrNoPassphrase) {
		t.Fatalf("short passphrase: %v", err)
	}
	if _, err := New([]byte(testPass), WithScryptCost(30, 8, 1)); err == nil {
		t.Fatal("absurd cost accepted")
	}
}

func TestIsSealedAndReopen(t *testing.T) {
	s, _ := New([]byte(testPass), WithScryptCost(10, 8, 1))
	blob, err := s.Seal([]byte("whsec_0123456789abcdef"), []byte("webhook:acme/wh-1"))
	if err != nil {
		t.Fatal(err)
	}
	if !IsSealed(blob) {
		t.Fatal("a sealed blob is not recognised")
	}
	for _, clear := range [][]byte{nil, []byte("whsec_0123456789abcdef"), []byte("GKEY"), blob[:headerLen]} {
		if IsSealed(clear) {
			t.Fatalf("IsSealed(%q) = true", clear)
		}
	}
	// Opened many times, concurrently (the derived key is reused): every
	// open gives the plaintext, and the label still binds.
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, err := s.Open(blob, []byte("webhook:acme/wh-1"))
			if err != nil || string(got) != "whsec_0123456789abcdef" {
				errs <- fmt.Errorf("open: %q, %v", got, err)
			}
			if _, err := s.Open(blob, []byte("webhook:acme/wh-2")); !errors.Is(err, ErrWrongPassphrase) {
				errs <- fmt.Errorf("other label: %v", err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	// Another passphrase's Sealer has its own keys: the cache opens
	// nothing for it.
	other, _ := New([]byte("another passphrase!"), WithScryptCost(10, 8, 1))
	if _, err := other.Open(blob, []byte("webhook:acme/wh-1")); !errors.Is(err, ErrWrongPassphrase) {
		t.Fatalf("other passphrase: %v", err)
	}
}

// FuzzOpen: a stored blob is read back from the database, which an
// attacker with write access to it may have altered: Open never panics,
// never opens anything but the sealed plaintext under its label, and
// refuses the rest with ErrFormat or ErrWrongPassphrase.
func FuzzOpen(f *testing.F) {
	s, err := New([]byte(testPass), WithScryptCost(4, 1, 1))
	if err != nil {
		f.Fatal(err)
	}
	blob, err := s.Seal([]byte("whsec_seed"), []byte("label"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(blob)
	f.Add([]byte("GKEY"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > 8 && (b[6] > 10 || b[7] > 2 || b[8] > 1) {
			return // costs the format accepts but too slow to fuzz
		}
		pt, err := s.Open(b, []byte("label"))
		switch {
		case err == nil:
			if string(pt) != "whsec_seed" {
				t.Fatalf("opened %q", pt)
			}
		case errors.Is(err, ErrFormat), errors.Is(err, ErrWrongPassphrase):
			if IsSealed(b) && errors.Is(err, ErrFormat) && b[6] >= 1 && b[7] >= 1 && b[8] >= 1 {
				t.Fatalf("IsSealed but format refused: %v", err)
			}
		default:
			t.Fatalf("Open: %v", err)
		}
	})
}
