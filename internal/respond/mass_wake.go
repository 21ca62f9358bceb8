package respond

// Wake makes [Mass.Serve] look for running jobs now rather than at the
// next [Mass.Submit] on this node: a job submitted through another node of
// the deployment, whose runner does not run there.
func (m *Mass) Wake() {
	select {
	case m.wake <- struct{}{}:
	default:
	}
}
