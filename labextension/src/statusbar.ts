/**
 * The status bar item: running and pending task counts of the active notebook's cluster.
 * It polls the kernel's cluster while a notebook with a kernel is active and the page is
 * visible, and hides itself when the notebook uses no cluster.
 */
import { INotebookTracker } from '@jupyterlab/notebook';
import { Poll } from '@lumino/polling';
import { Widget } from '@lumino/widgets';

import * as api from './api';

const INTERVAL_MS = 2000;
const MAX_BACKOFF_MS = 30000;

export class ClusterStatusItem extends Widget {
  constructor(
    private readonly tracker: INotebookTracker,
    onClick: () => void
  ) {
    super();
    this.id = 'rayjupyter-status';
    this.addClass('rj-StatusItem');
    this.node.title = 'Tasks of the cluster of this notebook (click: Clusters panel)';
    this.node.addEventListener('click', onClick);
    this.poll = new Poll({
      factory: () => this.refresh(),
      frequency: { interval: INTERVAL_MS, backoff: true, max: MAX_BACKOFF_MS },
      name: 'rayjupyter:status',
      standby: () => this.kernelId() === null || document.visibilityState === 'hidden'
    });
    tracker.currentChanged.connect(this.onNotebookChanged, this);
    this.onNotebookChanged();
  }

  private kernelId(): string | null {
    return this.tracker.currentWidget?.sessionContext.session?.kernel?.id ?? null;
  }

  private onNotebookChanged(): void {
    const panel = this.tracker.currentWidget;
    if (panel && !this.watched.has(panel.id)) {
      this.watched.add(panel.id);
      panel.sessionContext.kernelChanged.connect(() => void this.poll.refresh());
      panel.disposed.connect(() => this.watched.delete(panel.id));
    }
    this.render(null, 0, 0);
    void this.poll.refresh();
  }

  private async refresh(): Promise<void> {
    const kernelId = this.kernelId();
    if (kernelId === null) {
      this.render(null, 0, 0);
      return;
    }
    const reply = await api.kernelCluster(kernelId);
    if (reply.kernel_id !== this.kernelId()) {
      return; // the user switched notebooks meanwhile
    }
    const status = reply.cluster?.status ?? null;
    this.render(
      reply.cluster ? reply.cluster.address : null,
      status?.tasks_running ?? 0,
      status?.tasks_pending ?? 0
    );
  }

  private render(address: string | null, running: number, pending: number): void {
    const node = this.node;
    node.dataset.running = `${running}`;
    node.dataset.pending = `${pending}`;
    node.dataset.cluster = address ?? '';
    node.textContent = address ? `Ray: ${running} running, ${pending} pending` : '';
    node.title = address
      ? `Tasks of the cluster at ${address} (click: Clusters panel)`
      : 'This notebook uses no cluster';
    this.setHidden(address === null);
  }

  dispose(): void {
    if (!this.isDisposed) {
      this.poll.dispose();
      super.dispose();
    }
  }

  private readonly poll: Poll;
  private readonly watched = new Set<string>();
}
