"""A scoreboard player of the Python tutorial, against the ipckit manager.

`game_player` is the tutorial's function, unchanged; only the way the shared objects are
reached differs: instead of being handed proxies by a parent that made a
`multiprocessing.Manager()`, the player connects to the ipckit manager's address with
`BaseManager` and asks for the objects by name.

Usage: scoreboard_player.py ADDRESS AUTHKEY PLAYER_ID
"""

import multiprocessing
import random
import sys
import time
from multiprocessing.managers import BaseManager


def game_player(player_id, scores_dict, players_list, lock):
    """Player earning points in a multiplayer game 🎮"""

    # Register player
    with lock:
        players_list.append(f"Player_{player_id}")
        scores_dict[f"Player_{player_id}"] = 0

    # Play rounds
    for round_num in range(5):
        points = random.randint(10, 100)

        with lock:
            scores_dict[f"Player_{player_id}"] += points
            print(f"🎮 Player {player_id} scored {points} points! "
                  f"Total: {scores_dict[f'Player_{player_id}']}")

        time.sleep(random.uniform(0.1, 0.3))


class ScoreManager(BaseManager):
    pass


# The ipckit manager's objects, by name: `scores`, `players`, `lock`.
ScoreManager.register("get_scores")
ScoreManager.register("get_players")
ScoreManager.register("get_lock")

if __name__ == "__main__":
    address, authkey, player_id = sys.argv[1], sys.argv[2].encode(), int(sys.argv[3])
    manager = ScoreManager(address=address, authkey=authkey)
    manager.connect()
    game_player(player_id, manager.get_scores(), manager.get_players(), manager.get_lock())
    sys.stdout.flush()
