package seal

import "testing"

// BenchmarkOpenCached is opening a blob whose key was derived before (a
// webhook secret, for every delivery it signs): one AES-GCM decryption.
func BenchmarkOpenCached(b *testing.B) {
	s, err := New([]byte(testPass))
	if err != nil {
		b.Fatal(err)
	}
	blob, err := s.Seal([]byte("whsec_0123456789abcdef0123456789abcdef"), []byte("webhook:acme/wh-1"))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Open(blob, []byte("webhook:acme/wh-1")); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkOpenCold is the first open of a blob in a process: the scrypt
// derivation at the production cost (N=2^15, r=8, p=1).
func BenchmarkOpenCold(b *testing.B) {
	s, err := New([]byte(testPass))
	if err != nil {
		b.Fatal(err)
	}
	blob, err := s.Seal([]byte("whsec_0123456789abcdef0123456789abcdef"), []byte("webhook:acme/wh-1"))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		cold, _ := New([]byte(testPass))
		if _, err := cold.Open(blob, []byte("webhook:acme/wh-1")); err != nil {
			b.Fatal(err)
		}
	}
}
