/** Putting `%ray_connect ADDRESS` into the active notebook. */
import { NotebookActions, INotebookTracker } from '@jupyterlab/notebook';

/** The magic lines for a cluster; `%load_ext` too unless the notebook already has it. */
export function connectCode(address: string, hasExtension: boolean): string {
  const connect = `%ray_connect ${address}`;
  return hasExtension ? connect : `%load_ext rayjupyter\n${connect}`;
}

/**
 * Insert the code into the active notebook: into the active cell when it is an empty code
 * cell, else into a new code cell below it. Returns false when no notebook is open.
 */
export function insertConnect(
  tracker: INotebookTracker,
  address: string
): boolean {
  const panel = tracker.currentWidget;
  if (!panel) {
    return false;
  }
  const notebook = panel.content;
  const model = notebook.model;
  if (!model) {
    return false;
  }
  let hasExtension = false;
  for (let i = 0; i < model.cells.length; i++) {
    if (model.cells.get(i).sharedModel.getSource().includes('%load_ext rayjupyter')) {
      hasExtension = true;
    }
  }
  const code = connectCode(address, hasExtension);
  const active = notebook.activeCell;
  if (
    !active ||
    active.model.type !== 'code' ||
    active.model.sharedModel.getSource().trim() !== ''
  ) {
    NotebookActions.insertBelow(notebook);
    NotebookActions.changeCellType(notebook, 'code');
  }
  const cell = notebook.activeCell;
  if (!cell) {
    return false;
  }
  cell.model.sharedModel.setSource(code);
  notebook.activate();
  return true;
}
