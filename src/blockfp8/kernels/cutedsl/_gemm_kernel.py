"""The Hopper (SM90) block-FP8 GEMM, written in CuTe DSL: ``out = x @ w.T`` with 1x128 activation and 128x128
weight scales, promoted into a float32 accumulator once per 128-wide K block.

Why this kernel exists next to the Triton one: Triton's Hopper code waits for each K block's tensor-core group
before it promotes, and the loads come from the same warps. Here one warp group only issues TMA loads and one or
two warp groups only multiply, so the loads never sit between MMAs (warp specialisation, which Triton 3.6 does not
give on SM90).

Layout of one CTA (256 threads for 64-row tiles, 384 for 128-row tiles):
- warp group 0: one warp issues the TMA loads of an A tile (``tile_m`` x 128) and a B tile (``tile_n`` x 128) per
  K block into a ring of shared-memory stages, with the block's ``tile_m`` activation scales and weight scale;
- warp groups 1 (and 2): 64 rows each. Per K block: four ``wgmma`` (K = 32 each) into one of two scratch
  accumulators; once the next block's MMAs are issued into the other one, wait for this block's
  (``wait_group(1)``), free its stage and promote: ``acc += scratch * (a_scale[row] * b_scale)``, the same
  float32 product the reference takes. The scales come with the stage: the producer warp's lanes copy them in with
  ``cp.async`` whose completion counts on the stage's full barrier, and the MMA warps read them from shared memory
  when they issue the block's MMAs, one group before the promotion. So the MMA warps make no global loads in the K
  loop (loaded there, the scale product waited on them between MMA issues: 13 % of the stall samples, ncu, H200).
- the epilogue converts to the output dtype, goes through shared memory and leaves with TMA stores, which clip
  rows past M and columns past N.
Tiles are scheduled persistently (one CTA per SM, a static round-robin over output tiles).

Operands: ``a [M, K]`` and ``b [N, K]`` FP8 (K contiguous), ``sa [M, ceil(K/128)]`` and
``sb [ceil(N/128), ceil(K/128)]`` float32, both row-major; ``d [M, N]`` 16-bit. TMA needs 16-byte row strides, so
K % 16 == 0 and N % 8 == 0 (the launcher checks). Ragged edges: TMA fills rows/columns past M, N, K with zeros, and
scale rows past M are clamped to M - 1 (their products are never stored).
"""

from __future__ import annotations

import cutlass
import cutlass.cute as cute
import cutlass.pipeline as pipeline
import cutlass.utils as utils
import cutlass.utils.hopper_helpers as sm90
from cutlass.cute.nvgpu import cpasync, warpgroup

SCALE_BLOCK = 128  # one scale per 128 K (and per 128 weight rows): the tile's K depth is one scale block
THREADS_PER_WG = 128
SMEM_BYTES = 232448  # sm_90 opt-in shared memory per block


class BlockScaledGemmSm90:
    """A compiled-once kernel object; M, N and K stay dynamic."""

    def __init__(self, tile_m: int = 128, tile_n: int = 128, cluster: tuple[int, int] = (1, 1), swizzle: int = 1,
                 raster_m: bool = True, epi_stages: int = 3):
        if tile_n not in (64, 128):
            raise ValueError(f"tile_n={tile_n}: a tile must lie inside one 128-row weight-scale block (64 or 128)")
        if cluster not in ((1, 1), (2, 1), (1, 2), (2, 2)):
            raise ValueError(f"cluster={cluster}: one of (1, 1), (2, 1), (1, 2), (2, 2)")
        if tile_m not in (64, 128):
            raise ValueError(f"tile_m={tile_m}: 64 (one MMA warp group) or 128 (two)")
        self.tile = (tile_m, tile_n, SCALE_BLOCK)
        # CTAs of a cluster along N share their A tile, along M their B tile: each loads a slice and multicasts it,
        # so L2 serves fewer bytes per MMA (on the H200 this measured no faster; kept as a config option).
        self.cluster = cluster
        # Tile order: ``swizzle`` tiles (in cluster units) along the raster direction before stepping across, so the
        # tiles running at one time share A and B panels in L2.
        self.swizzle = swizzle
        self.raster_m = raster_m
        self.mcast_a = cluster[1]
        self.mcast_b = cluster[0]
        self.epi_stages = epi_stages
        self.mma_wgs = tile_m // 64  # 64 rows per MMA warp group
        self.threads = (1 + self.mma_wgs) * THREADS_PER_WG
        self.epi_tile = (tile_m, 32)
        ab_bytes = (self.tile[0] + self.tile[1]) * self.tile[2]
        # a stage also holds its K block's scales: tile_m activation scales and the weight scale (16-byte padded);
        # three epilogue buffers, not four, leave a 128x128 tile its six stages
        scale_bytes = (tile_m + 4) * 4
        epi_bytes = self.epi_tile[0] * self.epi_tile[1] * 2 * epi_stages
        self.stages = min(12, (SMEM_BYTES - 2048 - epi_bytes) // (ab_bytes + scale_bytes))
        self.epi_barrier = pipeline.NamedBarrier(barrier_id=1, num_threads=self.mma_wgs * THREADS_PER_WG)

    @cute.jit
    def __call__(self, a: cute.Tensor, b: cute.Tensor, sa: cute.Tensor, sb: cute.Tensor, d: cute.Tensor,
                 max_clusters: cutlass.Constexpr, stream):
        # a, b arrive as uint8 (DLPack has no FP8 everywhere): the same bytes, read as e4m3.
        m, k = a.shape
        n = b.shape[0]
        fp8 = cutlass.Float8E4M3FN
        a = cute.make_tensor(cute.recast_ptr(a.iterator, dtype=fp8), cute.make_layout((m, k, 1), stride=(k, 1, m * k)))
        b = cute.make_tensor(cute.recast_ptr(b.iterator, dtype=fp8), cute.make_layout((n, k, 1), stride=(k, 1, n * k)))
        d = cute.make_tensor(d.iterator, cute.make_layout((m, n, 1), stride=(n, 1, m * n)))
        self._launch(a, b, sa, sb, d, max_clusters, stream)

    @cute.jit
    def _launch(self, a: cute.Tensor, b: cute.Tensor, sa: cute.Tensor, sb: cute.Tensor, d: cute.Tensor,
                max_clusters: cutlass.Constexpr, stream):
        self.ab_dtype = a.element_type
        self.d_dtype = d.element_type
        a_layout = utils.LayoutEnum.from_tensor(a)
        b_layout = utils.LayoutEnum.from_tensor(b)
        self.d_layout = utils.LayoutEnum.from_tensor(d)

        tiled_mma = sm90.make_trivial_tiled_mma(self.ab_dtype, self.ab_dtype, a_layout.sm90_mma_major_mode(),
                                                b_layout.sm90_mma_major_mode(), cutlass.Float32,
                                                (self.mma_wgs, 1, 1), tiler_mn=(64, self.tile[1]))
        a_smem = sm90.make_smem_layout_a(a_layout, self.tile, self.ab_dtype, self.stages)
        b_smem = sm90.make_smem_layout_b(b_layout, self.tile, self.ab_dtype, self.stages)
        d_smem = sm90.make_smem_layout_epi(self.d_dtype, self.d_layout, self.epi_tile, self.epi_stages)

        tma_a, gA = cpasync.make_tiled_tma_atom(self._load_op(self.mcast_a), a, cute.slice_(a_smem, (None, None, 0)),
                                                (self.tile[0], self.tile[2]), num_multicast=self.mcast_a)
        tma_b, gB = cpasync.make_tiled_tma_atom(self._load_op(self.mcast_b), b, cute.slice_(b_smem, (None, None, 0)),
                                                (self.tile[1], self.tile[2]), num_multicast=self.mcast_b)
        tma_d, gD = cpasync.make_tiled_tma_atom(cpasync.CopyBulkTensorTileS2GOp(), d,
                                                cute.slice_(d_smem, (None, None, 0)), self.epi_tile)

        tiles_mnl = cute.zipped_divide(d, tiler=self.tile[:2])[(0, (None, None, None))].shape
        sched = utils.PersistentTileSchedulerParams(tiles_mnl, (*self.cluster, 1), self.swizzle, self.raster_m)
        grid = utils.StaticPersistentTileScheduler.get_grid_shape(sched, max_clusters)

        @cute.struct
        class Storage:
            barriers: cute.struct.MemRange[cutlass.Int64, self.stages * 2]
            sSA: cute.struct.Align[cute.struct.MemRange[cutlass.Float32, self.tile[0] * self.stages], 16]
            sSB: cute.struct.Align[cute.struct.MemRange[cutlass.Float32, 4 * self.stages], 16]
            sA: cute.struct.Align[cute.struct.MemRange[self.ab_dtype, cute.cosize(a_smem)], 1024]
            sB: cute.struct.Align[cute.struct.MemRange[self.ab_dtype, cute.cosize(b_smem)], 1024]
            sD: cute.struct.Align[cute.struct.MemRange[self.d_dtype, cute.cosize(d_smem)], 1024]

        self.storage = Storage
        self.kernel(tma_a, gA, tma_b, gB, tma_d, gD, sa, sb, tiled_mma, a_smem, b_smem, d_smem, sched).launch(
            grid=grid, block=[self.threads, 1, 1], cluster=(*self.cluster, 1), stream=stream)

    @staticmethod
    def _load_op(multicast: int):
        return cpasync.CopyBulkTensorTileG2SMulticastOp() if multicast > 1 else cpasync.CopyBulkTensorTileG2SOp()

    @cute.kernel
    def kernel(self, tma_a: cute.CopyAtom, mA: cute.Tensor, tma_b: cute.CopyAtom, mB: cute.Tensor,
               tma_d: cute.CopyAtom, mD: cute.Tensor, mSA: cute.Tensor, mSB: cute.Tensor, tiled_mma: cute.TiledMma,
               a_smem: cute.ComposedLayout, b_smem: cute.ComposedLayout, d_smem: cute.ComposedLayout,
               sched: utils.PersistentTileSchedulerParams):
        tidx, _, _ = cute.arch.thread_idx()
        warp = cute.arch.make_warp_uniform(cute.arch.warp_idx())
        wg = cute.arch.make_warp_uniform(tidx // THREADS_PER_WG)
        if warp == 0:
            cpasync.prefetch_descriptor(tma_a)
            cpasync.prefetch_descriptor(tma_b)
            cpasync.prefetch_descriptor(tma_d)

        cta_layout = cute.make_layout((*self.cluster, 1))
        cluster_coord = cta_layout.get_flat_coord(cute.arch.make_warp_uniform(cute.arch.block_idx_in_cluster()))
        mask_a = cute.make_layout_image_mask(cta_layout, cluster_coord, mode=1) if self.mcast_a > 1 else 0
        mask_b = cute.make_layout_image_mask(cta_layout, cluster_coord, mode=0) if self.mcast_b > 1 else 0

        smem = utils.SmemAllocator()
        storage = smem.allocate(self.storage)
        stage_bytes = cute.size_in_bytes(self.ab_dtype, cute.slice_(a_smem, (None, None, 0))) + cute.size_in_bytes(
            self.ab_dtype, cute.slice_(b_smem, (None, None, 0)))
        ring = pipeline.PipelineTmaAsync.create(
            barrier_storage=storage.barriers.data_ptr(), num_stages=self.stages,
            # full when the elected producer thread has armed it, the TMA bytes have landed and each producer lane's
            # scale copies have arrived (cp.async ... arrive.noinc: one arrival per lane)
            producer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread, 1 + 32),
            # a stage is free once every consumer warp of every CTA that reads a multicast into it has released it
            consumer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread,
                                                     (self.mcast_a + self.mcast_b - 1) * self.mma_wgs * 4),
            tx_count=stage_bytes, cta_layout_vmnk=cute.make_layout((1, *cta_layout.shape)), defer_sync=True)
        pipeline.pipeline_init_arrive(cluster_shape_mn=self.cluster, is_relaxed=True)

        sA = storage.sA.get_tensor(a_smem.outer, swizzle=a_smem.inner)
        sB = storage.sB.get_tensor(b_smem.outer, swizzle=b_smem.inner)
        sD = storage.sD.get_tensor(d_smem.outer, swizzle=d_smem.inner)
        sSA = storage.sSA.get_tensor(cute.make_layout((self.tile[0], self.stages)))  # (row in tile, stage)
        sSB = storage.sSB.get_tensor(cute.make_layout(self.stages, stride=4))

        # (tile, tile, tiles_m/n, tiles_k, L) views of the global operands
        gA = cute.local_tile(mA, cute.slice_(self.tile, (None, 0, None)), (None, None, None))
        gB = cute.local_tile(mB, cute.slice_(self.tile, (0, None, None)), (None, None, None))
        gD = cute.local_tile(mD, cute.slice_(self.tile, (None, None, 0)), (None, None, None))
        tAsA, tAgA = cpasync.tma_partition(tma_a, cluster_coord[1], cute.make_layout(self.mcast_a),
                                           cute.group_modes(sA, 0, 2), cute.group_modes(gA, 0, 2))
        tBsB, tBgB = cpasync.tma_partition(tma_b, cluster_coord[0], cute.make_layout(self.mcast_b),
                                           cute.group_modes(sB, 0, 2), cute.group_modes(gB, 0, 2))
        k_tiles = cute.size(gA, mode=[3])

        pipeline.pipeline_init_wait(cluster_shape_mn=self.cluster)  # barriers initialised cluster-wide

        if wg == 0:
            cute.arch.setmaxregister_decrease(40)
        if warp == 0:
            self._produce(ring, tma_a, tAgA, tAsA, mask_a, tma_b, tBgB, tBsB, mask_b, mSA, mSB, sSA, sSB, k_tiles,
                          sched)
        if wg > 0:
            cute.arch.setmaxregister_increase(232)
            self._consume(ring, tiled_mma, sA, sB, sD, gD, sSA, sSB, tma_d, k_tiles, sched, tidx - THREADS_PER_WG,
                          warp)

    @cute.jit
    def _produce(self, ring, tma_a, tAgA, tAsA, mask_a, tma_b, tBgB, tBsB, mask_b, mSA, mSB, sSA, sSB, k_tiles,
                 sched):
        """Per K block: the A and B tiles by TMA, and the block's scales by asynchronous 4-byte copies (each lane
        its rows; lane 0 the weight scale) whose completion the lanes attach to the stage's full barrier, so the
        producer never waits on a load."""
        lane = cute.arch.lane_idx()
        m_rows = mSA.shape[0]
        n_blocks = mSB.shape[0]
        scale_copy = cute.make_copy_atom(cpasync.CopyG2SOp(), cutlass.Float32, num_bits_per_copy=32)
        tiles = utils.StaticPersistentTileScheduler.create(sched, cute.arch.block_idx(), cute.arch.grid_dim())
        work = tiles.initial_work_tile_info()
        state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Producer, self.stages)
        while work.is_valid_tile:
            m, n, l = work.tile_idx
            src_a = tAgA[(None, m, None, l)]
            src_b = tBgB[(None, n, None, l)]
            # rows past M read row M - 1 (their products are never stored); a cluster's tile past N reads a valid
            # weight-scale row and stores nothing
            rows = [cutlass.min(m * self.tile[0] + j * 32 + lane, m_rows - 1) for j in range(self.tile[0] // 32)]
            nb = cutlass.min(n * self.tile[1] // SCALE_BLOCK, n_blocks - 1)
            for kt in range(k_tiles):
                ring.producer_acquire(state)
                bar = ring.producer_get_barrier(state)
                cute.copy(tma_a, src_a[(None, kt)], tAsA[(None, state.index)], tma_bar_ptr=bar, mcast_mask=mask_a)
                cute.copy(tma_b, src_b[(None, kt)], tBsB[(None, state.index)], tma_bar_ptr=bar, mcast_mask=mask_b)
                for j in cutlass.range_constexpr(len(rows)):
                    cute.copy(scale_copy, self._element(mSA, (rows[j], kt)),
                              self._element(sSA, (j * 32 + lane, state.index)))
                if lane == 0:
                    cute.copy(scale_copy, self._element(mSB, (nb, kt)), self._element(sSB, state.index))
                cute.arch.cp_async_mbarrier_arrive_noinc(bar)
                ring.producer_commit(state)
                state.advance()
            tiles.advance_to_next_work()
            work = tiles.get_current_work()
        ring.producer_tail(state)

    @staticmethod
    def _element(t: cute.Tensor, coord) -> cute.Tensor:
        """A one-element view of ``t`` at ``coord`` (the operand of a 4-byte copy)."""
        return cute.make_tensor(t.iterator + cute.crd2idx(coord, t.layout), cute.make_layout(1))

    @cute.jit
    def _consume(self, ring, tiled_mma, sA, sB, sD, gD, sSA, sSB, tma_d, k_tiles, sched, ctid, warp):
        thr = tiled_mma.get_slice(ctid)
        frag_a = tiled_mma.make_fragment_A(thr.partition_A(sA))
        frag_b = tiled_mma.make_fragment_B(thr.partition_B(sB))
        acc_shape = thr.partition_C(gD).shape[:3]
        acc = cute.make_rmem_tensor(acc_shape, cutlass.Float32)
        part0 = cute.make_rmem_tensor(acc_shape, cutlass.Float32)
        part1 = cute.make_rmem_tensor(acc_shape, cutlass.Float32)
        k_blocks = cute.size(frag_a, mode=[2])

        # Which of this thread's two accumulator rows each value belongs to. The fragment layout is affine in the
        # thread index, so thread 0's (static) coordinates give every thread's row offsets.
        ident = cute.make_identity_tensor(self.tile[:2])
        my_coords = thr.partition_C(ident)
        coords0 = tiled_mma.get_slice(0).partition_C(ident)
        row_offs = [coords0[i][0] - coords0[0][0] for i in range(cute.size(coords0))]
        distinct = sorted(set(row_offs))
        which = [distinct.index(o) for o in row_offs]
        my_rows = [my_coords[0][0] + o for o in distinct]  # rows within the tile

        # Epilogue: registers -> shared (stmatrix) -> global (TMA store), one (128 x 32) subtile at a time.
        store_atom = sm90.get_smem_store_op(self.d_layout, self.d_dtype, cutlass.Float32)
        st_tiled = cute.make_tiled_copy_C_atom(
            cute.make_copy_atom(cute.nvgpu.warp.StMatrix8x8x16bOp(self.d_layout.is_m_major_c(), 4), self.d_dtype),
            tiled_mma)
        r2s = cute.make_tiled_copy_S(store_atom, st_tiled)
        thr_r2s = r2s.get_slice(ctid)
        tRS_sD = thr_r2s.partition_D(sD)
        tRS_acc = r2s.retile(acc)
        rD_shape = cute.shape(thr_r2s.partition_S(sD))[:3]
        rD = cute.make_rmem_tensor(rD_shape, cutlass.Float32)
        rD_out = cute.make_rmem_tensor(rD_shape, self.d_dtype)
        per_sub = cute.size(rD)
        store_ring = pipeline.PipelineTmaStore.create(
            num_stages=self.epi_stages,
            producer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread, self.mma_wgs * THREADS_PER_WG))

        tiles = utils.StaticPersistentTileScheduler.create(sched, cute.arch.block_idx(), cute.arch.grid_dim())
        work = tiles.initial_work_tile_info()
        reading = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, self.stages)
        releasing = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, self.stages)
        while work.is_valid_tile:
            m, n, l = work.tile_idx
            acc.fill(0.0)
            # Two scratch accumulators: K block t + 1's MMAs run while K block t is promoted (wait_group(1)),
            # so the tensor cores do not idle during a promotion.
            # A block's scales are read from its stage when its MMAs are issued, one MMA group before its
            # promotion needs them, so the read's latency never holds up the next group's MMA issue.
            tiled_mma, reading, sa0, sb0 = self._issue(ring, reading, tiled_mma, part0, frag_a, frag_b, k_blocks,
                                                       sSA, sSB, my_rows)
            sa1 = sa0
            sb1 = sb0
            pairs = (k_tiles - 1) // 2
            for _ in range(pairs):
                tiled_mma, reading, sa1, sb1 = self._issue(ring, reading, tiled_mma, part1, frag_a, frag_b, k_blocks,
                                                           sSA, sSB, my_rows)
                releasing = self._retire(ring, releasing, acc, part0, sa0, sb0, which, 1)
                tiled_mma, reading, sa0, sb0 = self._issue(ring, reading, tiled_mma, part0, frag_a, frag_b, k_blocks,
                                                           sSA, sSB, my_rows)
                releasing = self._retire(ring, releasing, acc, part1, sa1, sb1, which, 1)
            if k_tiles - 2 * pairs == 2:  # one K block left after the pairs
                tiled_mma, reading, sa1, sb1 = self._issue(ring, reading, tiled_mma, part1, frag_a, frag_b, k_blocks,
                                                           sSA, sSB, my_rows)
                releasing = self._retire(ring, releasing, acc, part0, sa0, sb0, which, 1)
                releasing = self._retire(ring, releasing, acc, part1, sa1, sb1, which, 0)
            else:
                releasing = self._retire(ring, releasing, acc, part0, sa0, sb0, which, 0)

            sub_tiles = cute.zipped_divide(gD[(None, None, m, n, l)], self.epi_tile)
            bSG_sD, bSG_gD = cpasync.tma_partition(tma_d, 0, cute.make_layout(1), cute.group_modes(sD, 0, 2),
                                                   sub_tiles)
            n_sub = cute.size(sub_tiles, mode=[1])
            sub_shape = sub_tiles.shape[1]
            sub_order = cute.make_layout(sub_shape, stride=(sub_shape[1], 1))
            done = tiles.num_tiles_executed * n_sub
            for s in cutlass.range_constexpr(n_sub):
                for v in cutlass.range_constexpr(per_sub):
                    rD[v] = tRS_acc[s * per_sub + v]
                rD_out.store(rD.load().to(self.d_dtype))
                buf = (done + s) % self.epi_stages
                cute.copy(r2s, rD_out, tRS_sD[(None, None, None, buf)])
                cute.arch.fence_proxy("async.shared", space="cta")
                self.epi_barrier.arrive_and_wait()
                if warp == 4:  # the first consumer warp issues the store
                    cute.copy(tma_d, bSG_sD[(None, buf)], bSG_gD[(None, sub_order.get_hier_coord(s))])
                    store_ring.producer_commit()
                    store_ring.producer_acquire()
                self.epi_barrier.arrive_and_wait()
            tiles.advance_to_next_work()
            work = tiles.get_current_work()
        store_ring.producer_tail()

    @cute.jit
    def _issue(self, ring, reading, tiled_mma, part, frag_a, frag_b, k_blocks: cutlass.Constexpr, sSA, sSB,
               my_rows):
        """Wait for the next stage, read its scales of this thread's rows and issue its four MMAs into ``part``
        (overwritten: ACCUMULATE starts off)."""
        ring.consumer_wait(reading)
        sa = [sSA[r, reading.index] for r in my_rows]
        sb = sSB[reading.index]
        warpgroup.fence()
        tiled_mma.set(warpgroup.Field.ACCUMULATE, False)
        for kb in cutlass.range_constexpr(k_blocks):
            coord = (None, None, kb, reading.index)
            cute.gemm(tiled_mma, part, frag_a[coord], frag_b[coord], part)
            tiled_mma.set(warpgroup.Field.ACCUMULATE, True)
        warpgroup.commit_group()
        reading.advance()
        return tiled_mma, reading, sa, sb  # rebound by the caller: the tracer carries only plain locals across loops

    @cute.jit
    def _retire(self, ring, releasing, acc, part, sa, sb, which, in_flight: cutlass.Constexpr):
        """Wait until at most ``in_flight`` MMA groups run, free the oldest stage, promote ``part`` into ``acc``
        with the float32 factor ``a_scale[row] * b_scale``."""
        factors = [s * sb for s in sa]
        warpgroup.wait_group(in_flight)
        ring.consumer_release(releasing)
        releasing.advance()
        for i in cutlass.range_constexpr(cute.size(acc)):
            acc[i] = acc[i] + part[i] * factors[which[i]]
        return releasing
