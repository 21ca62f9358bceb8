package agent

import "time"

// Backoff is an exponential back-off with full jitter: before retry number
// attempt (0 for the first) the agent waits a uniformly random duration in
// [0, min(Max, Base·2^attempt)). Full jitter is what keeps a fleet that
// lost its broker at the same instant from reconnecting at the same
// instant: the retries of N devices spread evenly over the whole window
// instead of arriving in waves.
type Backoff struct {
	Base time.Duration
	Max  time.Duration
}

// Ceiling is the upper bound of the wait before retry attempt.
func (b Backoff) Ceiling(attempt int) time.Duration {
	if attempt < 0 {
		attempt = 0
	}
	c := b.Base
	for i := 0; i < attempt && c < b.Max; i++ {
		c *= 2
	}
	return min(c, b.Max)
}

// Delay is the wait before retry attempt for a jitter r in [0, 1).
func (b Backoff) Delay(attempt int, r float64) time.Duration {
	if r < 0 || r >= 1 || r != r {
		r = 0
	}
	return time.Duration(r * float64(b.Ceiling(attempt)))
}
