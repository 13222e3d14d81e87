"""``CheckpointHook``: mmengine's checkpoint hook, saving crash-safely.

Per save: write ``.iter_N.pth.tmp`` -> fsync -> rename to ``iter_N.pth`` -> rewrite
``last_checkpoint`` -> delete checkpoints beyond ``max_keep_ckpts``. mmengine deletes the oldest
checkpoint first and truncates ``last_checkpoint`` in place, so a crash mid-save can leave it
pointing at nothing. A crash at any point here leaves ``last_checkpoint`` naming a complete one.
"""
from __future__ import annotations

import os
import os.path as osp

from mmengine.dist import barrier, is_main_process
from mmengine.fileio import LocalBackend
from mmengine.hooks import CheckpointHook as _MMEngineCheckpointHook

from mmllava.checkpoints import LAST_CHECKPOINT
from mmllava.engine.atomic_write import commit, remove_path, write_text_atomic
from mmllava.engine.resume import get_rng_state


class CheckpointHook(_MMEngineCheckpointHook):
    """mmengine's ``CheckpointHook`` (same arguments) with crash-safe saving (see module doc).

    The RNG state is stored with the checkpoint (message hub ``rng_state``) so ``TrainLoop`` can
    resume bit-exactly. Remote ``out_dir``s fall back to mmengine's saving.
    """

    def _save_checkpoint_with_step(self, runner, step, meta):
        if not isinstance(self.file_backend, LocalBackend):
            return super()._save_checkpoint_with_step(runner, step, meta)
        filename = self.filename_tmpl.format(step)
        final_path = osp.join(self.out_dir, filename)
        tmp_name = f'.{filename}.tmp'
        tmp_path = osp.join(self.out_dir, tmp_name)

        outdated = []
        if self.max_keep_ckpts > 0 and (not self.keep_ckpt_ids or self.keep_ckpt_ids[-1] != step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                outdated.append(self.keep_ckpt_ids[0])
            self.keep_ckpt_ids.append(step)  # a deque with maxlen: drops the oldest id
            runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))
        self.last_ckpt = final_path
        runner.message_hub.update_info('last_ckpt', final_path)
        runner.message_hub.update_info('rng_state', get_rng_state())

        if is_main_process():
            os.makedirs(self.out_dir, exist_ok=True)
            remove_path(tmp_path)  # left by a crash during an earlier save
        barrier()
        runner.save_checkpoint(self.out_dir, tmp_name, self.file_client_args, save_optimizer=self.save_optimizer,
                               save_param_scheduler=self.save_param_scheduler, meta=meta, by_epoch=self.by_epoch,
                               backend_args=self.backend_args, **self.args)
        barrier()  # every rank's DeepSpeed shard is written
        if not is_main_process():
            return
        commit(tmp_path, final_path)
        write_text_atomic(osp.join(runner.work_dir, LAST_CHECKPOINT), final_path)
        for old_step in outdated:
            remove_path(osp.join(self.out_dir, self.filename_tmpl.format(old_step)))
