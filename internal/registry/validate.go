package registry

import (
	"fmt"

	"github.com/garrisonhq/garrison/internal/store"
)

// Identifier rules applied to registrations, bindings and manifests:
//   - device id and serial: 1-64 characters of [A-Za-z0-9._:-]
//   - model: 1-64 characters of [A-Za-z0-9._:-]
//   - IMEI: 14-16 digits (IMEI without or with check digit, or IMEISV)
//   - ICCID: 18-22 digits (an optional trailing F pad is not accepted)
//   - IMSI: 6-15 digits
//
// Empty IMEI, ICCID and IMSI are allowed (not yet known).
const maxIDLen = 64

func validName(s string) bool {
	if len(s) == 0 || len(s) > maxIDLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == ':' || c == '-') {
			return false
		}
	}
	return true
}

func digits(s string, min, max int) bool {
	if len(s) < min || len(s) > max {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

func validateIdentifiers(imei, iccid, imsi string) error {
	if imei != "" && !digits(imei, 14, 16) {
		return fmt.Errorf("%w: imei %q must be 14-16 digits", store.ErrInvalid, imei)
	}
	if iccid != "" && !digits(iccid, 18, 22) {
		return fmt.Errorf("%w: iccid %q must be 18-22 digits", store.ErrInvalid, iccid)
	}
	if imsi != "" && !digits(imsi, 6, 15) {
		return fmt.Errorf("%w: imsi %q must be 6-15 digits", store.ErrInvalid, imsi)
	}
	return nil
}

// ValidateDevice checks a device before registration. Errors match
// store.ErrInvalid.
func ValidateDevice(d store.Device) error {
	if d.Tenant == "" {
		return fmt.Errorf("%w: tenant missing", store.ErrInvalid)
	}
	if !validName(string(d.ID)) {
		return fmt.Errorf("%w: device id %q must be 1-64 characters of [A-Za-z0-9._:-]", store.ErrInvalid, d.ID)
	}
	if !validName(d.Model) {
		return fmt.Errorf("%w: model %q must be 1-64 characters of [A-Za-z0-9._:-]", store.ErrInvalid, d.Model)
	}
	if d.Serial != "" && !validName(d.Serial) {
		return fmt.Errorf("%w: serial %q must be 1-64 characters of [A-Za-z0-9._:-]", store.ErrInvalid, d.Serial)
	}
	if !ValidState(d.State) {
		return fmt.Errorf("%w: unknown state %q", store.ErrInvalid, d.State)
	}
	return validateIdentifiers(d.IMEI, d.ICCID, d.IMSI)
}
