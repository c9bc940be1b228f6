import Foundation

/// Reads the JSON of the per-request wire messages straight from their bytes.
///
/// `JSONDecoder` spends ≈ 100 µs on a `BATCH` of 8 requests and ≈ 18 µs on one `SUBMIT` (the
/// Codable machinery, not the parsing), on the path every request takes. The scanner reads the
/// common form of those messages in a few microseconds and refuses (`Unsupported`) anything
/// else: an unknown or repeated key, a missing field, a number that is not a plain integer
/// where one is expected. The caller then falls back to `JSONDecoder`, which decides and words
/// the error, so both paths accept the same messages and give the same values.
struct JSONScanner {
    /// The scanner does not take this input; `JSONDecoder` must read it.
    struct Unsupported: Error {}

    private let bytes: [UInt8]
    private var index = 0

    init(_ data: Data) { bytes = [UInt8](data) }

    private mutating func skipWhitespace() {
        while index < bytes.count {
            switch bytes[index] {
            case 0x20, 0x09, 0x0A, 0x0D: index += 1
            default: return
            }
        }
    }

    private mutating func expect(_ byte: UInt8) throws {
        skipWhitespace()
        guard index < bytes.count, bytes[index] == byte else { throw Unsupported() }
        index += 1
    }

    /// Consumes `byte` if it comes next (after whitespace).
    private mutating func take(_ byte: UInt8) -> Bool {
        skipWhitespace()
        guard index < bytes.count, bytes[index] == byte else { return false }
        index += 1
        return true
    }

    /// Only whitespace remains.
    mutating func end() throws {
        skipWhitespace()
        guard index == bytes.count else { throw Unsupported() }
    }

    /// `{ "key": value, … }`: calls `field` with each key; it must read the value (or throw for a
    /// key it does not know). A repeated key is refused. Returns the number of keys, so with
    /// unknown keys refused, a caller that needs all its n fields checks for n.
    @discardableResult
    mutating func object(_ field: (inout JSONScanner, String) throws -> Void) throws -> Int {
        try expect(UInt8(ascii: "{"))
        if take(UInt8(ascii: "}")) { return 0 }
        // A message has about ten keys: one allocation, and a linear search beats hashing them.
        var keys: [String] = []
        keys.reserveCapacity(16)
        repeat {
            let key = try string()
            guard !keys.contains(key) else { throw Unsupported() }
            keys.append(key)
            try expect(UInt8(ascii: ":"))
            try field(&self, key)
        } while take(UInt8(ascii: ","))
        try expect(UInt8(ascii: "}"))
        return keys.count
    }

    /// `[ element, … ]`: calls `element` once per element; it must read it.
    mutating func array(_ element: (inout JSONScanner) throws -> Void) throws {
        try expect(UInt8(ascii: "["))
        if take(UInt8(ascii: "]")) { return }
        repeat { try element(&self) } while take(UInt8(ascii: ","))
        try expect(UInt8(ascii: "]"))
    }

    /// Consumes `null` if it comes next: an optional field that is absent.
    mutating func null() -> Bool {
        skipWhitespace()
        guard bytes.count - index >= 4, bytes[index] == UInt8(ascii: "n"), bytes[index + 1] == UInt8(ascii: "u"),
              bytes[index + 2] == UInt8(ascii: "l"), bytes[index + 3] == UInt8(ascii: "l") else { return false }
        index += 4
        return true
    }

    /// A string with every JSON escape (RFC 8259 §7); invalid UTF-8, raw control characters and
    /// lone surrogates are refused.
    mutating func string() throws -> String {
        try expect(UInt8(ascii: "\""))
        let start = index
        // The common case, no escapes: the bytes themselves.
        while index < bytes.count, bytes[index] != UInt8(ascii: "\""), bytes[index] != UInt8(ascii: "\\"), bytes[index] >= 0x20 {
            index += 1
        }
        guard index < bytes.count else { throw Unsupported() }
        var text = Array(bytes[start..<index])
        while bytes[index] != UInt8(ascii: "\"") {
            guard bytes[index] == UInt8(ascii: "\\"), index + 1 < bytes.count else { throw Unsupported() }
            let escape = bytes[index + 1]
            index += 2
            switch escape {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): text.append(escape)
            case UInt8(ascii: "b"): text.append(0x08)
            case UInt8(ascii: "f"): text.append(0x0C)
            case UInt8(ascii: "n"): text.append(0x0A)
            case UInt8(ascii: "r"): text.append(0x0D)
            case UInt8(ascii: "t"): text.append(0x09)
            case UInt8(ascii: "u"):
                var scalar = try hex4()
                if (0xD800..<0xDC00).contains(scalar) {
                    guard index + 1 < bytes.count, bytes[index] == UInt8(ascii: "\\"), bytes[index + 1] == UInt8(ascii: "u") else {
                        throw Unsupported()
                    }
                    index += 2
                    let low = try hex4()
                    guard (0xDC00..<0xE000).contains(low) else { throw Unsupported() }
                    scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                }
                guard let unicode = Unicode.Scalar(scalar) else { throw Unsupported() }
                text.append(contentsOf: String(Character(unicode)).utf8)
            default: throw Unsupported()
            }
            while index < bytes.count, bytes[index] != UInt8(ascii: "\""), bytes[index] != UInt8(ascii: "\\"), bytes[index] >= 0x20 {
                text.append(bytes[index])
                index += 1
            }
            guard index < bytes.count else { throw Unsupported() }
        }
        index += 1
        // The C-string initializer validates without the generic (and slow) path of
        // `String(validating:as:)`; a NUL inside the text is left to JSONDecoder.
        guard !text.contains(0) else { throw Unsupported() }
        text.append(0)
        guard let string = text.withUnsafeBufferPointer({ String(validatingCString: UnsafeRawPointer($0.baseAddress!).assumingMemoryBound(to: CChar.self)) }) else {
            throw Unsupported()
        }
        return string
    }

    private mutating func hex4() throws -> UInt32 {
        guard bytes.count - index >= 4 else { throw Unsupported() }
        var value: UInt32 = 0
        for _ in 0..<4 {
            let byte = bytes[index]
            let digit: UInt8
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = byte - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = byte - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = byte - UInt8(ascii: "A") + 10
            default: throw Unsupported()
            }
            value = value << 4 | UInt32(digit)
            index += 1
        }
        return value
    }

    /// The bytes of a JSON number (`-?(0|[1-9]d*)(.d+)?([eE][+-]?d+)?`), and whether it was a
    /// plain integer.
    private mutating func numberToken() throws -> (token: ArraySlice<UInt8>, isInteger: Bool) {
        skipWhitespace()
        let start = index
        func digits(_ scanner: inout JSONScanner) -> Int {
            let first = scanner.index
            while scanner.index < scanner.bytes.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(scanner.bytes[scanner.index]) {
                scanner.index += 1
            }
            return scanner.index - first
        }
        if index < bytes.count, bytes[index] == UInt8(ascii: "-") { index += 1 }
        let integerStart = index
        let integerDigits = digits(&self)
        guard integerDigits > 0, integerDigits == 1 || bytes[integerStart] != UInt8(ascii: "0") else { throw Unsupported() }
        var isInteger = true
        if index < bytes.count, bytes[index] == UInt8(ascii: ".") {
            index += 1
            guard digits(&self) > 0 else { throw Unsupported() }
            isInteger = false
        }
        if index < bytes.count, bytes[index] == UInt8(ascii: "e") || bytes[index] == UInt8(ascii: "E") {
            index += 1
            if index < bytes.count, bytes[index] == UInt8(ascii: "+") || bytes[index] == UInt8(ascii: "-") { index += 1 }
            guard digits(&self) > 0 else { throw Unsupported() }
            isInteger = false
        }
        return (bytes[start..<index], isInteger)
    }

    /// The magnitude and sign of a plain integer token; nil when it overflows `UInt64`.
    private func integerValue(_ token: ArraySlice<UInt8>) -> (magnitude: UInt64, negative: Bool)? {
        let negative = token.first == UInt8(ascii: "-")
        var magnitude: UInt64 = 0
        for byte in token.dropFirst(negative ? 1 : 0) {
            let (times10, overflow1) = magnitude.multipliedReportingOverflow(by: 10)
            let (sum, overflow2) = times10.addingReportingOverflow(UInt64(byte - UInt8(ascii: "0")))
            guard !overflow1, !overflow2 else { return nil }
            magnitude = sum
        }
        return (magnitude, negative)
    }

    /// A plain integer that fits `Int`.
    mutating func int() throws -> Int {
        let (token, isInteger) = try numberToken()
        guard isInteger, let (magnitude, negative) = integerValue(token) else { throw Unsupported() }
        if negative {
            guard magnitude <= UInt64(Int.max) + 1 else { throw Unsupported() }
            return magnitude == UInt64(Int.max) + 1 ? Int.min : -Int(magnitude)
        }
        guard magnitude <= UInt64(Int.max) else { throw Unsupported() }
        return Int(magnitude)
    }

    /// A plain non-negative integer that fits `UInt64`.
    mutating func uint64() throws -> UInt64 {
        let (token, isInteger) = try numberToken()
        // Any sign, even "-0", is JSONDecoder's to judge for an unsigned field.
        guard isInteger, token.first != UInt8(ascii: "-"), let (magnitude, _) = integerValue(token) else { throw Unsupported() }
        return magnitude
    }

    /// Any JSON number that is finite as a `Double` (correctly rounded, as `JSONDecoder` reads it).
    mutating func double() throws -> Double {
        let (token, _) = try numberToken()
        guard let value = Double(String(decoding: token, as: UTF8.self)), value.isFinite else { throw Unsupported() }
        // A non-zero number that rounds to zero (1e-400) is JSONDecoder's to judge too.
        if value == 0, token.prefix(while: { $0 != UInt8(ascii: "e") && $0 != UInt8(ascii: "E") }).contains(where: { (UInt8(ascii: "1")...UInt8(ascii: "9")).contains($0) }) {
            throw Unsupported()
        }
        return value
    }
}
