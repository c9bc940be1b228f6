import Tensor
import XCTest

// The comparison every parity test makes between Sura's tensors and a reference's.

/// max |a − b| / max |b|: the error relative to the reference's scale; infinite when the counts differ.
func relativeError(_ a: Tensor, _ b: Tensor) -> Float {
    let x = a.scalars, y = b.scalars
    guard x.count == y.count else { return .infinity }
    var diff: Float = 0, scale: Float = 0
    for i in x.indices {
        diff = max(diff, abs(x[i] - y[i]))
        scale = max(scale, abs(y[i]))
    }
    return diff / max(scale, 1e-30)
}

/// Fails unless both tensors exist, have the same shape (or, with `sameShape` false, the same
/// number of values) and `relativeError(a, b) < tolerance`; prints the error.
func assertParity(_ a: Tensor?, _ b: Tensor?, _ what: String, tolerance: Float = 1e-4, sameShape: Bool = true,
                  file: StaticString = #filePath, line: UInt = #line) {
    guard let a, let b else { return XCTFail("\(what): missing tensor", file: file, line: line) }
    if sameShape {
        XCTAssertEqual(a.shape, b.shape, "\(what) shape", file: file, line: line)
        guard a.shape == b.shape else { return }
    } else {
        XCTAssertEqual(a.count, b.count, "\(what) size (\(a.shape) vs \(b.shape))", file: file, line: line)
        guard a.count == b.count else { return }
    }
    let err = relativeError(a, b)
    print("parity \(what): relative error \(err)")
    XCTAssertLessThan(err, tolerance, "\(what): relative error \(err)", file: file, line: line)
}
