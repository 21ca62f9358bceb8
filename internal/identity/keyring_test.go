package identity

import (
	"bytes"
	"errors"
	"testing"
)

func TestSealerRoundTrip(t *testing.T) {
	s, err := NewSealer([]byte(testPass), WithScryptCost(10, 8, 1))
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
	hi, _ := NewSealer([]byte(testPass), WithScryptCost(11, 8, 1))
	c, _ := hi.Seal(pt, nil)
	if got, err := s.Open(c, nil); err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("open cross-cost: %q, %v", got, err)
	}
}

func TestSealerRefuses(t *testing.T) {
	s, _ := NewSealer([]byte(testPass), WithScryptCost(10, 8, 1))
	other, _ := NewSealer([]byte("another passphrase!"), WithScryptCost(10, 8, 1))
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
		{"bad magic", s, mut(func(b []byte) { b[0] = 'X' }), "ca:a:1", ErrSealedFormat},
		{"unknown version", s, mut(func(b []byte) { b[4] = 9 }), "ca:a:1", ErrSealedFormat},
		{"absurd cost", s, mut(func(b []byte) { b[6] = 40 }), "ca:a:1", ErrSealedFormat},
		{"truncated", s, blob[:20], "ca:a:1", ErrSealedFormat},
		{"empty", s, nil, "ca:a:1", ErrSealedFormat},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.s.Open(tc.blob, []byte(tc.label))
			if !errors.Is(err, tc.want) {
				t.Fatalf("Open: %v, want %v", err, tc.want)
			}
		})
	}
	if _, err := NewSealer([]byte("short")); !errors.Is(err, ErrNoPassphrase) {
		t.Fatalf("short passphrase: %v", err)
	}
	if _, err := NewSealer([]byte(testPass), WithScryptCost(30, 8, 1)); err == nil {
		t.Fatal("absurd cost accepted")
	}
}
