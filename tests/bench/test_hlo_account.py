"""bench/hlo_account: bytes per kind of scheduled op from optimized HLO text (hand-counted module)."""

from bench import hlo_account

HLO = """HloModule m, is_scheduled=true

%fused_computation (p0: bf16[4,8], p1: bf16[8,16]) -> bf16[4,16] {
  %p0 = bf16[4,8]{1,0} parameter(0)
  %p1 = bf16[8,16]{1,0} parameter(1)
  ROOT %dot.1 = bf16[4,16]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%fused_computation.1 (p0.1: f32[2,16,16]) -> f32[2,16,16] {
  %p0.1 = f32[2,16,16]{2,1,0:T(8,128)} parameter(0)
  ROOT %exp.1 = f32[2,16,16]{2,1,0:T(8,128)} exponential(%p0.1)
}

ENTRY %main (a: bf16[4,8], /*index=1*/b: bf16[8,16], s: f32[2,16,16]) -> (bf16[8,16], f32[2,16,16]) {
  %a = bf16[4,8]{1,0} parameter(0)
  %b = bf16[8,16]{1,0} parameter(1)
  %s = f32[2,16,16]{2,1,0:T(8,128)} parameter(2)
  %fusion = bf16[4,16]{1,0} fusion(%a, %b), kind=kOutput, calls=%fused_computation, metadata={op_name="x(y)"}
  %fusion.1 = f32[2,16,16]{2,1,0:T(8,128)} fusion(%s), kind=kLoop, calls=%fused_computation.1
  %all-gather = bf16[8,16]{1,0} all-gather(%fusion), dimensions={0}
  ROOT %tuple = (bf16[8,16]{1,0}, f32[2,16,16]{2,1,0:T(8,128)}) tuple(%all-gather, %fusion.1)
}
"""


def test_bytes_per_op_kind(tmp_path):
    path = tmp_path / "m.after_optimizations.txt"
    path.write_text(HLO)
    got = hlo_account.account(str(path), seq=16)
    # dot fusion: bf16 result 4x16 + operands 4x8 and 8x16 = 2 * (64 + 32 + 128) bytes
    assert got["matmul fusions (dot / convolution)"] == {"bytes": 448, "ops": 1}
    # the [2, 16, 16] f32 op reads and writes 2048 bytes
    assert got["attention scores (a [.., 16, 16] operand or result)"] == {"bytes": 4096, "ops": 1}
    assert got["collectives (all-gather)"] == {"bytes": 256 + 128, "ops": 1}
    assert len(got) == 3  # parameters, the tuple and fusion bodies are not scheduled ops
    one_more = hlo_account.diff(got, {**got, "copies / transposes": {"bytes": 10, "ops": 1}})
    assert one_more["copies / transposes"] == {"bytes": 10, "ops": 1} and one_more["collectives (all-gather)"]["bytes"] == 0
