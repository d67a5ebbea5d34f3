"""Recipes: the pipelines of the original collection as validated configs, runnable by name
(`llmft train supervised_finetuning/lora/arc`). `catalog` finds, lists, renders and copies them."""

from llm_finetuning.recipes.catalog import Recipe, all_recipes, copy_recipe, find_recipe, get_recipe, render

__all__ = ["Recipe", "all_recipes", "copy_recipe", "find_recipe", "get_recipe", "render"]
