package creds

import (
	"errors"
	"strings"
	"testing"
)

func TestPasswordHashVerify(t *testing.T) {
	pw, err := NewPassword()
	if err != nil {
		t.Fatal(err)
	}
	if len(pw) != 27 || strings.ContainsAny(pw, "+/=$ ") {
		t.Fatalf("password %q: want 27 base64url characters", pw)
	}
	other, _ := NewPassword()
	if other == pw {
		t.Fatal("two generated passwords are equal")
	}
	h, err := HashPassword(pw)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(h, "$argon2id$v=19$m=19456,t=2,p=1$") || strings.Contains(h, pw) {
		t.Fatalf("hash %q: want an argon2id PHC string without the password", h)
	}
	h2, _ := HashPassword(pw)
	if h2 == h {
		t.Fatal("two hashes of one password are equal: the salt is not random")
	}
	for _, c := range []struct {
		pw   string
		want bool
	}{
		{pw, true},
		{other, false},
		{pw[:26], false},
		{pw + "x", false},
		{"", false},
		{strings.Repeat("a", MaxPasswordLen+1), false},
	} {
		ok, err := VerifyPassword(h, c.pw)
		if err != nil || ok != c.want {
			t.Errorf("verify %.30q = %v, %v; want %v", c.pw, ok, err, c.want)
		}
	}
	if ok, err := VerifyPassword(h2, pw); !ok || err != nil {
		t.Errorf("second hash: %v %v", ok, err)
	}
}

func TestVerifyPasswordBadHash(t *testing.T) {
	good, _ := HashPassword("x")
	salt := strings.Split(good, "$")[4]
	key := strings.Split(good, "$")[5]
	for _, h := range []string{
		"",
		"plaintext",
		"$2a$10$bcryptbcryptbcryptbcryptbcryptbcryptbcryptbcryptbcr",
		"$argon2i$v=19$m=19456,t=2,p=1$" + salt + "$" + key,
		"$argon2id$v=16$m=19456,t=2,p=1$" + salt + "$" + key,
		"$argon2id$v=19$m=4194304,t=2,p=1$" + salt + "$" + key, // 4 GiB
		"$argon2id$v=19$m=19456,t=0,p=1$" + salt + "$" + key,
		"$argon2id$v=19$m=19456,t=2$" + salt + "$" + key,
		"$argon2id$v=19$t=2,m=19456,p=1$" + salt + "$" + key,
		"$argon2id$v=19$m=19456,t=2,p=1$!!$" + key,
		"$argon2id$v=19$m=19456,t=2,p=1$" + salt + "$" + key[:10],
		"$argon2id$v=19$m=19456,t=2,p=1$" + salt + "$" + key + "$",
	} {
		ok, err := VerifyPassword(h, "x")
		if ok || !errors.Is(err, ErrBadHash) {
			t.Errorf("hash %q: got %v, %v; want ErrBadHash", h, ok, err)
		}
	}
}

// FuzzParseHash: a stored hash is parsed before each verification; no
// input may panic or yield parameters beyond the bounds.
func FuzzParseHash(f *testing.F) {
	f.Add("$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0c2FsdA$a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2U")
	f.Add("$argon2id$v=19$m=8,t=1,p=1$AAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAA")
	f.Add("$argon2id$v=19$m=-1,t=2,p=1$$")
	f.Fuzz(func(t *testing.T, s string) {
		p, err := parseArgon(s)
		if err != nil {
			if !errors.Is(err, ErrBadHash) {
				t.Fatalf("error %v does not wrap ErrBadHash", err)
			}
			return
		}
		if p.memory > maxArgonMemory || p.time > maxArgonTime || p.threads > maxArgonThreads || len(p.key) < 16 {
			t.Fatalf("out of bounds: %+v", p)
		}
		if q, err := parseArgon(p.String()); err != nil || q.String() != p.String() {
			t.Fatalf("re-encoding %q: %v", p.String(), err)
		}
	})
}

// BenchmarkVerifyPassword is the cost of one password login's hash check
// (the password listener runs at most MaxVerifications of them at once).
func BenchmarkVerifyPassword(b *testing.B) {
	h, err := HashPassword("correct horse battery staple")
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if ok, _ := VerifyPassword(h, "correct horse battery staple"); !ok {
			b.Fatal("no match")
		}
	}
}
