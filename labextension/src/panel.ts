/**
 * The "Clusters" side panel: every cluster the server knows (ours, and Ray clusters added
 * by address), with its live nodes, CPU, memory and object-store bars and task counts by
 * state; buttons to start, stop, add, connect a notebook and open dashboard pages (ours, or
 * Ray's own dashboard through the server's proxy). It polls while visible, backs off on
 * errors and stands by while hidden.
 */
import { Poll } from '@lumino/polling';
import { Widget } from '@lumino/widgets';

import * as api from './api';
import { MAIN_PAGES } from './dashboard';
import { bytes, count, fraction } from './format';
import { ClusterEngine, ClusterInfo, ClusterStatus, DashboardPage } from './models';

export const PANEL_ID = 'rayjupyter-panel';
const INTERVAL_MS = 2000;
const MAX_BACKOFF_MS = 30000;

/** What the panel asks its host to do (the plugin wires these to commands). */
export interface IPanelActions {
  connect(cluster: ClusterInfo): void;
  openDashboard(cluster: ClusterInfo, page: DashboardPage): void;
}

export class ClustersPanel extends Widget {
  constructor(private readonly actions: IPanelActions) {
    super();
    this.id = PANEL_ID;
    this.addClass('rj-Panel');
    this.title.caption = 'Clusters';
    this.node.appendChild(this.buildHeader());
    this.message = el('div', 'rj-Panel-message');
    this.message.setAttribute('role', 'status');
    this.node.appendChild(this.message);
    this.list = el('ul', 'rj-ClusterList');
    this.node.appendChild(this.list);
    this.empty = el('p', 'rj-Panel-empty', 'No clusters yet: start one above, or run %ray_connect in a notebook.');
    this.node.appendChild(this.empty);
    this.poll = new Poll({
      factory: () => this.refresh(),
      frequency: { interval: INTERVAL_MS, backoff: true, max: MAX_BACKOFF_MS },
      name: 'rayjupyter:clusters',
      standby: () => !this.isVisible || document.visibilityState === 'hidden'
    });
  }

  /** Read the list now (and re-render); errors are shown and rethrown for the back-off. */
  async refresh(): Promise<void> {
    try {
      const { clusters, dashboard_pages, ray_dashboard_pages } = await api.listClusters();
      this.render(clusters, { rayjupyter: dashboard_pages, ray: ray_dashboard_pages });
      if (this.message.dataset.kind === 'poll-error') {
        this.showMessage('');
      }
    } catch (error) {
      this.showMessage(`Could not list clusters: ${messageOf(error)}`, 'poll-error');
      throw error;
    }
  }

  /** Start a local cluster owned by the Jupyter server, with the CPUs in the input. */
  async startCluster(): Promise<void> {
    const text = this.cpusInput.value.trim();
    const cpus = text === '' ? undefined : Number(text);
    if (cpus !== undefined && (!Number.isFinite(cpus) || cpus < 0)) {
      this.showMessage('CPUs must be a number >= 0 (empty: all of this machine).', 'error');
      return;
    }
    await this.busy(this.startButton, 'Starting…', async () => {
      const info = await api.startCluster(cpus);
      this.showMessage(`Started a local cluster at ${info.address}.`);
    });
  }

  /** Add a running cluster: rayjupyter://SECRET@HOST:PORT, or Ray's ray:// or http:// address. */
  async addCluster(): Promise<void> {
    const address = this.addressInput.value.trim();
    if (!address) {
      this.showMessage(
        'Paste the cluster address: rayjupyter://SECRET@HOST:PORT, or for a Ray cluster ' +
          'ray://HOST:10001 or its dashboard http://HOST:8265.',
        'error'
      );
      return;
    }
    await this.busy(this.addButton, 'Adding…', async () => {
      const info = await api.addCluster(address);
      this.addressInput.value = '';
      this.showMessage(`Added the cluster at ${info.address}.`);
    });
  }

  async stopCluster(cluster: ClusterInfo, button: HTMLButtonElement): Promise<void> {
    await this.busy(button, cluster.stop_action === 'stop' ? 'Stopping…' : 'Removing…', async () => {
      const reply = await api.stopCluster(cluster.id);
      this.showMessage(reply.message);
    });
  }

  protected onAfterShow(): void {
    void this.poll.refresh();
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this.poll.dispose();
    super.dispose();
  }

  private buildHeader(): HTMLElement {
    const header = el('div', 'rj-Panel-header');
    header.appendChild(el('h2', 'rj-Panel-title', 'Clusters'));

    const start = el('div', 'rj-Panel-row');
    this.cpusInput = el('input', 'rj-Panel-cpus jp-mod-styled') as HTMLInputElement;
    this.cpusInput.type = 'number';
    this.cpusInput.min = '0';
    this.cpusInput.placeholder = 'CPUs';
    this.cpusInput.title = 'CPUs of the new local cluster (empty: all of this machine)';
    this.startButton = button('Start cluster', 'start', () => void this.startCluster());
    this.startButton.title = 'Start a local cluster owned by this Jupyter server';
    this.startButton.classList.add('jp-mod-accept');
    start.append(this.cpusInput, this.startButton);

    const add = el('div', 'rj-Panel-row');
    this.addressInput = el('input', 'rj-Panel-address jp-mod-styled') as HTMLInputElement;
    this.addressInput.placeholder = 'rayjupyter://SECRET@HOST:PORT or ray://HOST:10001';
    this.addressInput.title =
      'Address of a running cluster: rayjupyter://SECRET@HOST:PORT, or a Ray cluster: ' +
      'ray://HOST:10001 (its dashboard on HOST:8265) or its dashboard http://HOST:PORT';
    this.addressInput.addEventListener('keydown', event => {
      if (event.key === 'Enter') {
        void this.addCluster();
      }
    });
    this.addButton = button('Add', 'add', () => void this.addCluster());
    add.append(this.addressInput, this.addButton);

    header.append(start, add);
    return header;
  }

  private render(clusters: ClusterInfo[], pages: PagesByEngine): void {
    const seen = new Set<string>();
    for (const cluster of clusters) {
      seen.add(cluster.id);
      let item = this.items.get(cluster.id);
      if (!item) {
        item = new ClusterItem(this, this.actions);
        this.items.set(cluster.id, item);
      }
      item.update(cluster, pages[cluster.engine] ?? []);
      this.list.appendChild(item.node); // keeps the server's order
    }
    for (const [id, item] of this.items) {
      if (!seen.has(id)) {
        item.node.remove();
        this.items.delete(id);
      }
    }
    this.empty.hidden = clusters.length > 0;
  }

  private async busy(
    target: HTMLButtonElement,
    label: string,
    work: () => Promise<void>
  ): Promise<void> {
    const before = target.textContent;
    target.disabled = true;
    target.textContent = label;
    try {
      await work();
      await this.poll.refresh();
    } catch (error) {
      this.showMessage(messageOf(error), 'error');
    } finally {
      target.disabled = false;
      target.textContent = before;
    }
  }

  showMessage(text: string, kind: 'info' | 'error' | 'poll-error' = 'info'): void {
    this.message.textContent = text;
    this.message.dataset.kind = text ? kind : '';
    this.message.classList.toggle('rj-mod-error', text !== '' && kind !== 'info');
  }

  private readonly poll: Poll;
  private readonly list: HTMLElement;
  private readonly message: HTMLElement;
  private readonly empty: HTMLElement;
  private readonly items = new Map<string, ClusterItem>();
  private cpusInput!: HTMLInputElement;
  private addressInput!: HTMLInputElement;
  private startButton!: HTMLButtonElement;
  private addButton!: HTMLButtonElement;
}

/** One cluster's entry: built once, then updated in place at every poll. */
class ClusterItem {
  readonly node: HTMLLIElement;

  constructor(
    private readonly panel: ClustersPanel,
    private readonly actions: IPanelActions
  ) {
    this.node = el('li', 'rj-Cluster') as HTMLLIElement;
    const head = el('div', 'rj-Cluster-head');
    this.name = el('span', 'rj-Cluster-address');
    this.origin = el('span', 'rj-Cluster-origin');
    head.append(this.name, this.origin);
    this.nodes = el('div', 'rj-Cluster-nodes');
    this.bars = el('div', 'rj-Cluster-bars');
    this.cpu = new Bar('CPU');
    this.memory = new Bar('Memory');
    this.store = new Bar('Object store');
    this.bars.append(this.cpu.node, this.memory.node, this.store.node);
    this.tasks = el('div', 'rj-Cluster-tasks');
    this.error = el('div', 'rj-Cluster-error');
    this.note = el('div', 'rj-Cluster-note');

    const buttons = el('div', 'rj-Cluster-buttons');
    this.connect = button('Connect notebook', 'connect', () =>
      this.actions.connect(this.cluster)
    );
    buttons.appendChild(this.connect);
    this.stop = button('Stop', 'stop', () => void this.panel.stopCluster(this.cluster, this.stop));
    this.stop.classList.add('jp-mod-warn');
    buttons.appendChild(this.stop);
    this.dashboard = el('div', 'rj-Cluster-dashboard');
    this.node.append(
      head,
      this.nodes,
      this.bars,
      this.tasks,
      this.error,
      this.note,
      buttons,
      this.dashboard
    );
  }

  update(cluster: ClusterInfo, pages: DashboardPage[]): void {
    this.cluster = cluster;
    this.renderPages(pages);
    const node = this.node;
    node.dataset.clusterId = cluster.id;
    node.dataset.engine = cluster.engine;
    node.dataset.origin = cluster.origin;
    node.dataset.state = cluster.status ? 'up' : 'unreachable';
    this.name.textContent = cluster.address;
    this.name.title = `session ${cluster.id}`;
    this.origin.textContent =
      cluster.engine === 'ray' ? `Ray · ${ORIGINS[cluster.origin]}` : ORIGINS[cluster.origin];
    this.origin.title = cluster.kernel_id
      ? `kernel ${cluster.kernel_id}`
      : cluster.owner_pid
        ? `owner pid ${cluster.owner_pid}`
        : '';
    const status = cluster.status;
    this.bars.hidden = status === null;
    this.tasks.hidden = status === null;
    this.error.hidden = status !== null;
    this.error.textContent = cluster.error ?? '';
    if (status) {
      this.renderStatus(status);
    } else {
      this.nodes.textContent = 'not answering';
      this.nodes.dataset.alive = '0';
    }
    // no address: Jupyter does not allow this user to run code (the address holds the secret)
    this.connect.disabled = cluster.connect_address === null;
    this.connect.title =
      cluster.connect_address === null
        ? 'You may not run code on this cluster (ask the Jupyter server administrator)'
        : 'Insert %ray_connect for this cluster into the current notebook';
    const action = cluster.stop_action;
    this.stop.hidden = action === 'none';
    if (!this.stop.disabled) {
      this.stop.textContent = action === 'forget' ? 'Remove' : 'Stop';
    }
    this.stop.title = cluster.stop_note;
    this.note.hidden = action !== 'none';
    this.note.textContent = action === 'none' ? cluster.stop_note : '';
  }

  /** Buttons for the main dashboard pages and a menu for the others (built once). */
  private renderPages(pages: DashboardPage[]): void {
    const key = pages.map(p => p.path).join(',');
    if (key === this.pagesKey) {
      return;
    }
    this.pagesKey = key;
    this.dashboard.replaceChildren(el('span', 'rj-Cluster-dashboardLabel', 'Dashboard:'));
    for (const page of pages.slice(0, MAIN_PAGES)) {
      const open = button(page.title, `dashboard-${page.path}`, () =>
        this.actions.openDashboard(this.cluster, page)
      );
      open.classList.add('rj-mod-link');
      open.title = `Open the dashboard's ${page.title.toLowerCase()} in a tab`;
      this.dashboard.appendChild(open);
    }
    const more = pages.slice(MAIN_PAGES);
    if (more.length) {
      const select = el('select', 'rj-Cluster-morePages jp-mod-styled') as HTMLSelectElement;
      select.title = 'Open another dashboard page';
      select.appendChild(new Option('more…', ''));
      for (const page of more) {
        select.appendChild(new Option(page.title, page.path));
      }
      select.addEventListener('change', () => {
        const page = more.find(p => p.path === select.value);
        select.value = '';
        if (page) {
          this.actions.openDashboard(this.cluster, page);
        }
      });
      this.dashboard.appendChild(select);
    }
  }

  private renderStatus(status: ClusterStatus): void {
    const alive = status.nodes_alive;
    this.nodes.dataset.alive = `${alive}`;
    this.nodes.textContent = `${alive} node${alive === 1 ? '' : 's'} alive`;
    this.nodes.title = status.nodes
      .map(
        n => `${n.address} ${n.alive ? 'alive' : 'dead'} (${count(n.resources.CPU ?? 0)} CPU)`
      )
      .join('\n');
    this.cpu.set(
      fraction(status.cpu_used, status.cpu_total),
      `${count(status.cpu_used)} / ${count(status.cpu_total)} CPUs in use · machine ${Math.round(status.cpu_percent)}%`
    );
    this.memory.set(
      fraction(status.memory_used, status.memory_total),
      `${bytes(status.memory_used)} / ${bytes(status.memory_total)}`
    );
    this.store.set(
      fraction(status.store_used, status.store_capacity),
      `${bytes(status.store_used)} / ${bytes(status.store_capacity)}`
    );
    this.tasks.replaceChildren();
    const counts: { [state: string]: number } = {
      RUNNING: status.tasks_running,
      PENDING: status.tasks_pending
    };
    for (const state of TASK_STATES) {
      const value = counts[state] ?? 0;
      const chip = el('span', 'rj-TaskCount', `${state.toLowerCase()} ${value}`);
      chip.dataset.state = state;
      chip.dataset.count = `${value}`;
      this.tasks.appendChild(chip);
    }
    const actors = Object.values(status.actors).reduce((a, b) => a + b, 0);
    const chip = el('span', 'rj-TaskCount', `actors ${actors}`);
    chip.dataset.state = 'ACTORS';
    chip.dataset.count = `${actors}`;
    this.tasks.appendChild(chip);
  }

  private cluster!: ClusterInfo;
  private pagesKey = '';
  private readonly dashboard: HTMLElement;
  private readonly name: HTMLElement;
  private readonly origin: HTMLElement;
  private readonly nodes: HTMLElement;
  private readonly bars: HTMLElement;
  private readonly cpu: Bar;
  private readonly memory: Bar;
  private readonly store: Bar;
  private readonly tasks: HTMLElement;
  private readonly error: HTMLElement;
  private readonly note: HTMLElement;
  private readonly stop: HTMLButtonElement;
  private readonly connect: HTMLButtonElement;
}

/** A labelled horizontal bar. */
class Bar {
  readonly node: HTMLElement;

  constructor(label: string) {
    this.node = el('div', 'rj-Bar');
    this.node.dataset.bar = label;
    this.node.appendChild(el('span', 'rj-Bar-label', label));
    const track = el('div', 'rj-Bar-track');
    this.fill = el('div', 'rj-Bar-fill');
    track.appendChild(this.fill);
    this.text = el('span', 'rj-Bar-text');
    this.node.append(track, this.text);
  }

  set(value: number, text: string): void {
    this.fill.style.width = `${(value * 100).toFixed(1)}%`;
    this.node.dataset.value = value.toFixed(3);
    this.fill.classList.toggle('rj-mod-high', value > 0.9);
    this.text.textContent = text;
  }

  private readonly fill: HTMLElement;
  private readonly text: HTMLElement;
}

/** The dashboard pages of each engine (Ray's dashboard has its own routes). */
type PagesByEngine = { [engine in ClusterEngine]: DashboardPage[] };

// live tasks: running, and pending (waiting for their arguments or for a worker)
const TASK_STATES = ['RUNNING', 'PENDING'];

const ORIGINS: { [origin: string]: string } = {
  panel: 'started here',
  kernel: 'kernel',
  process: 'local process',
  remote: 'remote'
};

function el(tag: string, className: string, text?: string): HTMLElement {
  const node = document.createElement(tag);
  node.className = className;
  if (text !== undefined) {
    node.textContent = text;
  }
  return node;
}

function button(label: string, action: string, onClick: () => void): HTMLButtonElement {
  const node = el('button', 'rj-Button jp-mod-styled', label) as HTMLButtonElement;
  node.type = 'button';
  node.dataset.action = action;
  node.addEventListener('click', onClick);
  return node;
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
