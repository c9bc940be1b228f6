import Foundation

/// Writes a JSON object straight into bytes, for the messages sent per request
/// (`DirectlyWrittenWireMessage`): Foundation's `JSONEncoder` spends ≈ 10 µs on a `RESULT` header
/// (reflection over the Codable tree, key sorting), a batch of 8 replies 80 µs of the loop that
/// every other message waits behind, and ≈ 50 µs on a `BATCH` of 8. Callers add fields in sorted
/// key order, as `WireProtocol.encode` sorts them, and the output parses to the same values.
struct JSONObjectWriter {
    private var bytes: [UInt8] = [UInt8(ascii: "{")]
    /// False once a value had no JSON form (a non-finite number): the caller must fall back.
    private(set) var isValid = true
    /// No field written yet in the innermost open object: the next key needs no comma.
    private var atObjectStart = true

    init() { bytes.reserveCapacity(256) }

    private mutating func key(_ name: StaticString) {
        if !atObjectStart { bytes.append(UInt8(ascii: ",")) }
        atObjectStart = false
        bytes.append(UInt8(ascii: "\""))
        name.withUTF8Buffer { bytes.append(contentsOf: $0) }
        bytes.append(contentsOf: [UInt8(ascii: "\""), UInt8(ascii: ":")])
    }

    mutating func field(_ name: StaticString, _ value: String) {
        key(name)
        bytes.append(UInt8(ascii: "\""))
        for byte in value.utf8 {
            switch byte {
            case UInt8(ascii: "\""): bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "\"")])
            case UInt8(ascii: "\\"): bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "\\")])
            case UInt8(ascii: "\n"): bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "n")])
            case UInt8(ascii: "\r"): bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "r")])
            case UInt8(ascii: "\t"): bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "t")])
            case 0..<0x20:
                // Other control characters: \u00XX (RFC 8259 §7).
                let hex = Array("0123456789abcdef".utf8)
                bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0"),
                                          hex[Int(byte >> 4)], hex[Int(byte & 0xf)]])
            default: bytes.append(byte)
            }
        }
        bytes.append(UInt8(ascii: "\""))
    }

    mutating func field(_ name: StaticString, _ value: Int) {
        key(name)
        bytes.append(contentsOf: String(value).utf8)
    }

    mutating func field(_ name: StaticString, _ value: UInt64) {
        key(name)
        bytes.append(contentsOf: String(value).utf8)
    }

    /// Swift's shortest round-trip form ("4.0", "1e-05", "0.123"), all valid JSON numbers.
    mutating func field(_ name: StaticString, _ value: Double) {
        key(name)
        guard value.isFinite else {
            isValid = false
            return
        }
        bytes.append(contentsOf: value.description.utf8)
    }

    /// An array of objects: `write` adds each element's fields, in sorted key order.
    mutating func field<Elements: Sequence>(_ name: StaticString, objects: Elements,
                                            _ write: (inout JSONObjectWriter, Elements.Element) -> Void) {
        key(name)
        bytes.append(UInt8(ascii: "["))
        for (k, element) in objects.enumerated() {
            bytes.append(contentsOf: k > 0 ? [UInt8(ascii: ","), UInt8(ascii: "{")] : [UInt8(ascii: "{")])
            atObjectStart = true
            write(&self, element)
            bytes.append(UInt8(ascii: "}"))
        }
        bytes.append(UInt8(ascii: "]"))
        atObjectStart = false
    }

    /// The object's bytes, or nil when a value had no JSON form.
    func finish() -> Data? {
        guard isValid else { return nil }
        var out = bytes
        out.append(UInt8(ascii: "}"))
        return Data(out)
    }
}
