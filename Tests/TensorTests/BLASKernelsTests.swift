import XCTest
import Tensor

final class BLASKernelsTests: XCTestCase {
    private let cpuinfo = """
    processor\t: 0
    model name\t: Intel(R) Xeon(R) Processor
    flags\t\t: fpu sse sse2 fma avx avx2 avx512f avx512bw
    processor\t: 1
    flags\t\t: fpu
    """

    func testReadsTheFirstCPUsFlags() {
        let flags = BLASKernels.cpuFlags(cpuinfo: cpuinfo)
        XCTAssertEqual(flags, ["fpu", "sse", "sse2", "fma", "avx", "avx2", "avx512f", "avx512bw"])
        XCTAssertEqual(BLASKernels.cpuFlags(cpuinfo: nil), [])
        XCTAssertEqual(BLASKernels.cpuFlags(cpuinfo: "processor : 0\n"), [])
    }

    func testWarnsOnlyWhenGenericKernelsRunOnAnAVX2CPU() throws {
        let flags = BLASKernels.cpuFlags(cpuinfo: cpuinfo)
        let warning = try XCTUnwrap(BLASKernels.fallbackWarning(coreName: "Prescott", cpuFlags: flags))
        XCTAssertTrue(warning.contains("Prescott"), warning)
        XCTAssertTrue(warning.contains("OPENBLAS_CORETYPE=SkylakeX"), warning)
        let avx2Only = BLASKernels.fallbackWarning(coreName: "Prescott", cpuFlags: ["avx2", "fma"])
        XCTAssertEqual(avx2Only?.contains("OPENBLAS_CORETYPE=Haswell"), true)
        XCTAssertEqual(avx2Only?.contains("SkylakeX"), false)
        // Tuned kernels, or a CPU that has nothing better: no warning.
        XCTAssertNil(BLASKernels.fallbackWarning(coreName: "Haswell", cpuFlags: flags))
        XCTAssertNil(BLASKernels.fallbackWarning(coreName: "SkylakeX", cpuFlags: flags))
        XCTAssertNil(BLASKernels.fallbackWarning(coreName: "Prescott", cpuFlags: ["sse3"]))
    }

    func testSummaryNamesTheKernelsInUse() {
        XCTAssertFalse(BLASKernels.coreName.isEmpty)
        XCTAssertTrue(BLASKernels.summary.contains("OPENBLAS_CORETYPE="), BLASKernels.summary)
        XCTAssertTrue(BLASKernels.summary.contains("(OpenBLAS kernels: \(BLASKernels.coreName))"), BLASKernels.summary)
    }
}
