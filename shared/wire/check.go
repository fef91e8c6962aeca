package wire

import (
	"encoding/binary"
	"fmt"
)

// maxDepth bounds nesting in a message; ours nest three deep.
const maxDepth = 32

// checkMsgpack walks a msgpack message without decoding it and refuses
// one whose declared lengths do not fit in its bytes. The decoder sizes
// its allocations from declared lengths, so a 10-byte message declaring a
// map of a billion entries would otherwise cost megabytes per message: an
// amplification a hostile publisher could use against any service.
func checkMsgpack(b []byte) error {
	stack := []int{1} // values still to read at each nesting level
	i := 0
	for len(stack) > 0 {
		top := len(stack) - 1
		if stack[top] == 0 {
			stack = stack[:top]
			continue
		}
		stack[top]--
		if i >= len(b) {
			return fmt.Errorf("%w: truncated", ErrGarbage)
		}
		c := b[i]
		i++
		items, skip := 0, 0
		container := false
		length := func(size int) (int, error) {
			if len(b)-i < size {
				return 0, fmt.Errorf("%w: truncated length", ErrGarbage)
			}
			var n uint64
			switch size {
			case 1:
				n = uint64(b[i])
			case 2:
				n = uint64(binary.BigEndian.Uint16(b[i:]))
			case 4:
				n = uint64(binary.BigEndian.Uint32(b[i:]))
			}
			i += size
			if n > uint64(len(b)-i) {
				return 0, fmt.Errorf("%w: declared length %d beyond the message", ErrGarbage, n)
			}
			return int(n), nil
		}
		var err error
		switch {
		case c <= 0x7f, c >= 0xe0, c == 0xc0, c == 0xc2, c == 0xc3:
		case c >= 0x80 && c <= 0x8f:
			items, container = 2*int(c&0x0f), true
		case c >= 0x90 && c <= 0x9f:
			items, container = int(c&0x0f), true
		case c >= 0xa0 && c <= 0xbf:
			skip = int(c & 0x1f)
		case c == 0xc4, c == 0xd9:
			skip, err = length(1)
		case c == 0xc5, c == 0xda:
			skip, err = length(2)
		case c == 0xc6, c == 0xdb:
			skip, err = length(4)
		case c == 0xc7:
			skip, err = length(1)
			skip++ // the ext type
		case c == 0xc8:
			skip, err = length(2)
			skip++
		case c == 0xc9:
			skip, err = length(4)
			skip++
		case c == 0xca:
			skip = 4
		case c == 0xcb:
			skip = 8
		case c == 0xcc, c == 0xd0:
			skip = 1
		case c == 0xcd, c == 0xd1:
			skip = 2
		case c == 0xce, c == 0xd2:
			skip = 4
		case c == 0xcf, c == 0xd3:
			skip = 8
		case c >= 0xd4 && c <= 0xd8:
			skip = 1 + 1<<(c-0xd4)
		case c == 0xdc:
			items, err = length(2)
			container = true
		case c == 0xdd:
			items, err = length(4)
			container = true
		case c == 0xde:
			items, err = length(2)
			items, container = 2*items, true
		case c == 0xdf:
			items, err = length(4)
			items, container = 2*items, true
		default:
			return fmt.Errorf("%w: byte 0x%02x", ErrGarbage, c)
		}
		if err != nil {
			return err
		}
		if skip > len(b)-i {
			return fmt.Errorf("%w: truncated value", ErrGarbage)
		}
		i += skip
		if container {
			if items > len(b)-i {
				return fmt.Errorf("%w: %d elements declared in %d bytes", ErrGarbage, items, len(b)-i)
			}
			if len(stack) >= maxDepth {
				return fmt.Errorf("%w: nested deeper than %d", ErrGarbage, maxDepth)
			}
			stack = append(stack, items)
		}
	}
	return nil
}
